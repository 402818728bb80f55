"""A record table opened for decoding: its usable records, their labels at one width, their image bytes."""

import numpy as np
import pytest

from flow.errors import ImageError, RecordIOError
from flow.image_records import ImageRecords
from flow.recordio import IRHeader, RecordWriter, pack, read_record_table, unpack
from tests.fixtures import MXNET_FIXTURES


def opened(table, label_width=1, skip_bad_records=False):
    records = ImageRecords(table, label_width, skip_bad_records)
    records.close()  # what the tests look at stays readable: the labels are copies
    return records


def test_labels_have_the_first_records_width_unless_data_label_width_says_otherwise():
    table = read_record_table(MXNET_FIXTURES / "multilabel.rec")
    for label_width in (1, 3):
        records = opened(table, label_width)
        assert records.label_width == 3 and np.array_equal(records.labels, table.label_rows(3))
    with pytest.raises(RecordIOError, match=r"record 0 \(#0 in the file\): record has 3 labels, expected 2"):
        opened(table, label_width=2)
    single = opened(read_record_table(MXNET_FIXTURES / "val.rec"))
    assert single.labels.shape == (200,) and single.labels.dtype == np.float32


def test_bad_records_are_an_error_unless_skipped_then_marked_and_labelled_zero(tmp_path):
    path = tmp_path / "bad.rec"
    with RecordWriter(path, index=True) as writer:
        writer.write(pack(IRHeader(0, 1.0, 0, 0), b"image"), key=10)
        writer.write(pack(IRHeader(0, [2.0, 3.0], 0, 0), b"image"), key=11)  # two labels, the first record one
        writer.write(b"short", key=12)
        writer.write(pack(IRHeader(0, 4.0, 0, 0), b"image"), key=13)
    table = read_record_table(path)
    with pytest.raises(RecordIOError, match=r"record 11 \(#1 in the file\): record has 2 labels, expected 1"):
        opened(table)
    records = opened(table, skip_bad_records=True)
    assert records.bad.tolist() == [False, True, True, False]
    assert records.labels.tolist() == [1.0, 0.0, 0.0, 4.0]


def test_image_bytes_and_errors_name_the_record():
    table = read_record_table(MXNET_FIXTURES / "train.rec")
    records = ImageRecords(table, 1, False)
    try:
        start, end = table.image_start[5], table.image_end[5]
        with open(table.path, "rb") as file:
            assert records.memory[start:end] == unpack(file.read()[table.offsets[5] + 8:end])[1]
    finally:
        records.close()
    error = records.image_error(5, "corrupt")
    assert isinstance(error, ImageError) and f"at byte {table.offsets[5]}: record {table.keys[5]} (#5" in str(error)


@pytest.mark.parametrize("label", [float("nan"), float("inf"), -1.0, 1e9, 10.0, 2.5])
def test_a_label_that_is_no_class_id_is_a_bad_record(tmp_path, label):
    path = tmp_path / "labels.rec"
    with RecordWriter(path, index=True) as writer:
        for key, value in enumerate([3.0, label, 9.0]):
            writer.write(pack(IRHeader(0, value, key, 0), b"image"), key=key)
    table = read_record_table(path)
    with pytest.raises(RecordIOError, match=rf"labels.rec: at byte \d+: record 1 \(#1 in the file\): label "
                                            rf"{float(np.float32(label))!r} is not a class id: expected an "
                                            rf"integer in \[0, 10\) \(data.num_classes\)"):
        ImageRecords(table, 1, False, num_classes=10)
    records = ImageRecords(table, 1, True, num_classes=10)
    records.close()
    assert records.bad.tolist() == [False, True, False] and records.labels[[0, 2]].tolist() == [3.0, 9.0]
    opened(table)  # without num_classes (a loss of the caller's own), labels are the caller's business


def test_no_usable_record_at_all_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "bad.rec"
    with RecordWriter(path, index=True) as writer:
        writer.write(pack(IRHeader(0, -1.0, 0, 0), b"image"))
        writer.write(b"short")
    with pytest.raises(RecordIOError, match=r"record 0 \(#0 in the file\): no record can be used: all 2 are bad"):
        ImageRecords(read_record_table(path), 1, True, num_classes=10)
