"""`flow predict`: a checkpoint's predictions of a .rec, as .npy or .csv files."""

import csv
import re

import numpy as np
import pytest
import trio

from flow.cli import main
from flow.config import load_config
from flow.inference import predict
from flow.recordio import IRHeader, RecordWriter, pack_img
from flow.run import train
from tests.fixtures import MXNET_FIXTURES, repacked_rec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A config whose checkpoint 1 exists, and a .rec of 21 records (batch 8: the last with 3 pads)."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "train.toml"
    config.write_text(f"""
[data]
data_train = "{MXNET_FIXTURES / 'resized.rec'}"
image_shape = [3, 32, 32]
num_classes = 10
batch_size = 8
data_nthreads = 1
rgb_mean = [123.68, 116.779, 103.939]
rgb_std = [58.393, 57.12, 57.375]
[model]
network = "mlp"
[train]
num_epochs = 1
lr = 0.05
disp_batches = 100
[checkpoint]
model_prefix = "model"
""")
    trio.run(train, load_config(config))
    return config, repacked_rec(folder / "new.rec", 7, 21)


def expected(config, records):
    async def collect():
        async with predict(load_config(config, ["checkpoint.load_epoch=1"]), str(records)) as batches:
            return [batch async for batch in batches]
    batches = trio.run(collect)
    return np.concatenate([b.ids for b in batches]), np.concatenate([b.probabilities for b in batches])


def test_npy_and_csv_hold_each_records_id_and_probabilities(trained, tmp_path):
    config, records = trained
    ids, probabilities = expected(config, records)
    assert len(ids) == 21 and np.isfinite(probabilities).all()
    for name in ("preds.npy", "preds.csv"):
        assert main(["predict", str(config), "--load-epoch", "1", "--data", str(records), "-o", str(tmp_path / name)]) == 0
    table = np.load(tmp_path / "preds.npy")
    assert table["id"].tolist() == ids.tolist() and np.array_equal(table["probabilities"], probabilities)
    with open(tmp_path / "preds.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id"] + [f"p{klass}" for klass in range(10)]
    assert [int(row[0]) for row in rows[1:]] == ids.tolist()
    assert np.array_equal(np.array([row[1:] for row in rows[1:]], dtype=np.float32), probabilities)


def test_top_k_writes_the_best_classes_and_their_scores(trained, tmp_path):
    config, records = trained
    ids, probabilities = expected(config, records)
    assert main(["predict", str(config), "--load-epoch", "1", "--data", str(records), "-o", str(tmp_path / "top.npy"),
                 "--top-k", "3"]) == 0
    table = np.load(tmp_path / "top.npy")
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    assert table["id"].tolist() == ids.tolist() and np.array_equal(table["classes"], best)
    assert np.array_equal(table["scores"], np.take_along_axis(probabilities, best, axis=1))


def small_images_rec(folder):
    path = folder / "small.rec"
    with RecordWriter(path, index=True) as writer:
        writer.write(pack_img(IRHeader(0, 1.0, 9, 0), np.zeros((20, 20, 3), dtype=np.uint8)), key=0)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", r"model-0004\.params: no such checkpoint file"),
    ("small images", r"small\.rec: at byte 0: record 0 \(#0 in the file\): image is 20x20 after resize/pad, "
                     r"smaller than the output 32x32"),
    ("bad output name", r"preds\.txt: predictions are written as \.npy or \.csv, not \.txt"),
    ("negative top-k", r"top-k: expected k >= 0, got -1"),
])
def test_what_it_cannot_predict_is_one_line_exit_1_and_no_file(trained, tmp_path, capfd, case, message):
    config, records = trained
    output = tmp_path / ("preds.txt" if case == "bad output name" else "preds.npy")
    argv = ["predict", str(config), "--load-epoch", "4" if case == "missing checkpoint" else "1",
            "--data", str(small_images_rec(tmp_path) if case == "small images" else records), "-o", str(output)]
    if case == "negative top-k":
        argv += ["--top-k", "-1"]
    assert main(argv) == 1
    error = capfd.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.match(r"flow predict: error: .*" + message, error), error
    assert list(tmp_path.glob("preds*")) == []
