"""Prediction files: .npy and .csv written a batch at a time, read back exactly, atomic."""

import csv
import tracemalloc

import numpy as np
import pytest

from flow.errors import FlowError
from flow.prediction_files import PredictionWriter, top_k


def batches(count, rows=8, classes=5, seed=0):
    generator = np.random.default_rng(seed)
    for index in range(count):
        logits = generator.normal(size=(rows, classes)).astype(np.float32)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        yield np.arange(index * rows, (index + 1) * rows, dtype=np.uint64) + np.uint64(2 ** 63), probabilities


def written(path, parts, k=0):
    with PredictionWriter(path, k) as writer:
        for ids, probabilities in parts:
            writer.write(ids, probabilities)
    return writer


def test_npy_holds_every_row_as_given(tmp_path):
    parts = list(batches(3)) + [next(batches(1, rows=3, seed=1))]
    writer = written(tmp_path / "preds.npy", parts)
    table = np.load(tmp_path / "preds.npy")
    assert writer.written == len(table) == 27
    assert table.dtype.names == ("id", "probabilities") and table["id"].dtype == np.uint64
    assert table["id"].tolist() == np.concatenate([ids for ids, _ in parts]).tolist()
    assert np.array_equal(table["probabilities"], np.concatenate([p for _, p in parts]))
    assert not (tmp_path / "preds.npy.tmp").exists()


def test_npy_top_k_keeps_the_best_classes_best_first(tmp_path):
    parts = list(batches(2))
    written(tmp_path / "preds.npy", parts, k=2)
    table = np.load(tmp_path / "preds.npy")
    probabilities = np.concatenate([p for _, p in parts])
    order = np.argsort(-probabilities, axis=1)[:, :2]
    assert table.dtype.names == ("id", "classes", "scores")
    assert np.array_equal(table["classes"], order)
    assert np.array_equal(table["scores"], np.take_along_axis(probabilities, order, axis=1))


def test_top_k_breaks_ties_by_the_lower_class_and_stops_at_the_class_count():
    classes, scores = top_k(np.array([[0.25, 0.5, 0.25]], dtype=np.float32), 5)
    assert classes.tolist() == [[1, 0, 2]] and scores.tolist() == [[0.5, 0.25, 0.25]]


@pytest.mark.parametrize("k", [0, 3])
def test_csv_rows_read_back_to_the_same_float32s(tmp_path, k):
    parts = list(batches(2))
    written(tmp_path / "preds.csv", parts, k)
    with open(tmp_path / "preds.csv", newline="") as file:
        rows = list(csv.reader(file))
    probabilities = np.concatenate([p for _, p in parts])
    ids = np.concatenate([i for i, _ in parts])
    if k:
        assert rows[0] == ["id", "class1", "score1", "class2", "score2", "class3", "score3"]
        classes, scores = top_k(probabilities, k)
        assert [[int(c) for c in row[1::2]] for row in rows[1:]] == classes.tolist()
        assert np.array_equal(np.array([row[2::2] for row in rows[1:]], dtype=np.float32), scores)
    else:
        assert rows[0] == ["id", "p0", "p1", "p2", "p3", "p4"]
        assert np.array_equal(np.array([row[1:] for row in rows[1:]], dtype=np.float32), probabilities)
    assert [int(row[0]) for row in rows[1:]] == ids.tolist()


def test_no_rows_is_an_empty_file_of_its_kind(tmp_path):
    written(tmp_path / "none.npy", [])
    assert np.load(tmp_path / "none.npy").shape == (0,)
    written(tmp_path / "none.csv", [])
    assert (tmp_path / "none.csv").read_text().splitlines() == ["id"]


def test_an_error_midway_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "preds.npy"
    path.write_bytes(b"old")
    with pytest.raises(ArithmeticError):
        with PredictionWriter(path) as writer:
            writer.write(*next(batches(1)))
            raise ArithmeticError("the model failed")
    assert path.read_bytes() == b"old" and not (tmp_path / "preds.npy.tmp").exists()


@pytest.mark.parametrize("name", ["preds.txt", "preds"])
def test_an_unknown_suffix_is_refused(tmp_path, name):
    with pytest.raises(FlowError, match=r"written as \.npy or \.csv"):
        PredictionWriter(tmp_path / name)


@pytest.mark.parametrize("suffix, count", [(".npy", 150), (".csv", 30)])  # CSV's text is slow to trace
def test_the_writer_holds_one_batch_however_many_it_writes(tmp_path, suffix, count):
    rows, classes = 64, 100  # 25.6 KB of probabilities a batch
    parts = batches(count, rows, classes)
    first = next(parts)
    tracemalloc.start()
    try:
        with PredictionWriter(tmp_path / f"preds{suffix}") as writer:
            writer.write(*first)
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for ids, probabilities in parts:
                writer.write(ids, probabilities)
                del ids, probabilities
            peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert writer.written == rows * count
    assert peak < 8 * rows * classes * 4  # a few batches' worth (the batch, its rows, the CSV text), not all
