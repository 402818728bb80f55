import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.errors import RecordIOError
from flow.recordio import (
    MAGIC_BYTES,
    IndexedRecordReader,
    IRHeader,
    RecordReader,
    RecordWriter,
    encode_record,
    pack,
    pack_img,
    read_index,
    unpack,
    unpack_img,
)
from tests.fixtures import MXNET_FIXTURES, PASSTHROUGH_RECORDS

MANIFEST = json.loads((MXNET_FIXTURES / "manifest.json").read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- MXNet's own files


def test_raw_payloads_and_keys_match_manifest():
    with IndexedRecordReader(MXNET_FIXTURES / "raw.rec") as reader:
        assert len(reader) == MANIFEST["raw"]["records"] == 64
        for key, expected in zip(reader.keys.tolist(), MANIFEST["raw"]["all"], strict=True):
            payload = reader.read_key(key)
            assert key == expected["key"]
            assert len(payload) == expected["len"]
            assert sha256(payload) == expected["sha256"]


def test_sequential_read_matches_indexed_read():
    with IndexedRecordReader(MXNET_FIXTURES / "raw.rec") as indexed, RecordReader(MXNET_FIXTURES / "raw.rec") as plain:
        assert list(plain) == indexed.read_positions(range(len(indexed)))


@pytest.mark.parametrize("name", ["train", "val", "passthrough", "resized"])
def test_image_records_ids_and_labels_match_manifest(name):
    expected_count = {"train": 800, "passthrough": PASSTHROUGH_RECORDS, "val": 200, "resized": 200}[name]
    listing = MANIFEST["val" if name in ("val", "resized") else "train"]
    with IndexedRecordReader(MXNET_FIXTURES / f"{name}.rec") as reader:
        assert len(reader) == expected_count
        assert listing["records"] == (800 if name == "passthrough" else expected_count)
        for position, expected in enumerate(listing["first"]):
            header, _ = unpack(reader.read_position(position))
            assert header.flag == 0
            assert header.id == int(expected["id"])
            assert header.label == float(expected["label"])
            assert reader.keys[position] == int(expected["id"])


def test_multilabel_records_match_manifest():
    with IndexedRecordReader(MXNET_FIXTURES / "multilabel.rec") as reader:
        assert len(reader) == MANIFEST["multilabel"]["records"]
        for position, expected in enumerate(MANIFEST["multilabel"]["first"]):
            header, _ = unpack(reader.read_position(position))
            assert header.flag == 3
            assert header.id == expected["id"]
            np.testing.assert_array_equal(header.label, np.float32(expected["label"]))


def test_decoded_rgb_matches_mxnet_within_two_levels():
    with IndexedRecordReader(MXNET_FIXTURES / "train.rec") as reader:
        for expected in MANIFEST["decoded_rgb"]:
            header, image = unpack_img(reader.read_key(expected["id"]))
            assert header.label == expected["label"]
            assert list(image.shape) == expected["shape"]
            np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), expected["rgb_mean"], atol=2)
            np.testing.assert_allclose(image[0, 0], expected["pixel_0_0_rgb"], atol=2)


# The passthrough files are a record-aligned prefix of MXNet's (the repository keeps ~3 MB of data).
PASSTHROUGH_PREFIX_SHA256 = {
    "passthrough.idx": "da17cd5e8715e32d35352c100b64360b348ec106b3448a4c95b55955aee1e175",
    "passthrough.lst": "b01d763605dc5f712b87e16eff136ed58a5451365cb11bb1ae4f74aa5c24cd7a",
    "passthrough.rec": "c5e5a9145b7e563a9ae0afe9eff20dca1601bb47cb06b7a0b224ef3246897a7e",
}


def test_every_fixture_file_is_the_one_the_manifest_describes():
    for name, digest in MANIFEST["files"].items():
        digest = PASSTHROUGH_PREFIX_SHA256.get(name, digest)
        assert sha256((MXNET_FIXTURES / name).read_bytes()) == digest, name


def test_writer_reproduces_raw_rec_and_idx_byte_for_byte(tmp_path):
    with IndexedRecordReader(MXNET_FIXTURES / "raw.rec") as reader, RecordWriter(tmp_path / "raw.rec", index=True) as writer:
        for key in reader.keys.tolist():
            writer.write(reader.read_key(key), key=key)
    assert (tmp_path / "raw.rec").read_bytes() == (MXNET_FIXTURES / "raw.rec").read_bytes()
    assert (tmp_path / "raw.idx").read_bytes() == (MXNET_FIXTURES / "raw.idx").read_bytes()


def test_writer_reproduces_multilabel_headers_byte_for_byte(tmp_path):
    """Re-pack each record's labels and image bytes with flow's pack(): the whole file comes out the same."""
    with IndexedRecordReader(MXNET_FIXTURES / "multilabel.rec") as reader, \
            RecordWriter(tmp_path / "multilabel.rec", index=True) as writer:
        for key in reader.keys.tolist():
            header, image_bytes = unpack(reader.read_key(key))
            writer.write(pack(IRHeader(0, header.label.tolist(), header.id, header.id2), image_bytes), key=key)
    assert (tmp_path / "multilabel.rec").read_bytes() == (MXNET_FIXTURES / "multilabel.rec").read_bytes()
    assert (tmp_path / "multilabel.idx").read_bytes() == (MXNET_FIXTURES / "multilabel.idx").read_bytes()


def test_scan_finds_the_same_offsets_as_the_index():
    for name in ["raw", "train", "multilabel"]:
        with IndexedRecordReader(MXNET_FIXTURES / f"{name}.rec") as reader:
            np.testing.assert_array_equal(reader.scan_offsets(), reader.offsets)


def test_reader_without_index_scans_and_numbers_records(tmp_path):
    (tmp_path / "raw.rec").write_bytes((MXNET_FIXTURES / "raw.rec").read_bytes())
    with IndexedRecordReader(tmp_path / "raw.rec") as reader, IndexedRecordReader(MXNET_FIXTURES / "raw.rec") as indexed:
        assert reader.index_path is None
        assert reader.keys.tolist() == list(range(64))
        assert reader.read_positions(range(64)) == indexed.read_positions(range(64))


# --------------------------------------------------------------------------- the format itself


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.lists(st.sampled_from([MAGIC_BYTES, b"\x0a", b"\xce\xd7", b"\0"]),
                                                   max_size=12).map(b"".join), max_size=8))
def test_round_trip_arbitrary_payloads(tmp_path_factory, payloads):
    path = tmp_path_factory.mktemp("rt") / "data.rec"
    with RecordWriter(path, index=True) as writer:
        offsets = [writer.write(payload) for payload in payloads]
    with IndexedRecordReader(path) as reader:
        assert reader.offsets.tolist() == offsets
        assert reader.read_positions(range(len(payloads))) == payloads
        assert list(RecordReader(path)) == payloads
    assert path.stat().st_size % 4 == 0


def test_magic_at_aligned_offsets_splits_into_parts():
    payload = MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"xy"
    encoded = encode_record(payload)
    parts = []
    offset = 0
    while offset < len(encoded):
        magic, lrec = struct.unpack_from("<II", encoded, offset)
        length = lrec & (2**29 - 1)
        parts.append((lrec >> 29, encoded[offset + 8 : offset + 8 + length]))
        offset += 8 + length + (-length % 4)
    assert parts == [(1, b""), (2, b"abcd"), (3, b"xy")]


def test_unaligned_magic_is_not_split():
    payload = b"ab" + MAGIC_BYTES + b"cd"
    encoded = encode_record(payload)
    assert struct.unpack_from("<I", encoded, 4)[0] >> 29 == 0
    assert len(encoded) == 8 + 8


def test_empty_payload_is_one_empty_part():
    assert encode_record(b"") == MAGIC_BYTES + b"\0\0\0\0"


def test_pack_unpack_single_and_multi_label():
    header, payload = unpack(pack(IRHeader(0, 3.5, 7, 9), b"img"))
    assert header == IRHeader(0, 3.5, 7, 9) and payload == b"img"
    header, payload = unpack(pack(IRHeader(0, [1.0, 2.5, -3.0], 8, 0), b"img"))
    assert header.flag == 3 and header.id == 8 and payload == b"img"
    np.testing.assert_array_equal(header.label, np.float32([1.0, 2.5, -3.0]))


def test_pack_img_round_trips_rgb_png_exactly():
    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    header, decoded = unpack_img(pack_img(IRHeader(0, 1.0, 0, 0), image, quality=3, encoding=".png"))
    np.testing.assert_array_equal(decoded, image)
    _, decoded_jpeg = unpack_img(pack_img(IRHeader(0, 1.0, 0, 0), image, quality=95, encoding=".jpg"))
    assert decoded_jpeg.shape == image.shape


# --------------------------------------------------------------------------- damaged files


def copy_fixture(tmp_path, name="raw"):
    for suffix in (".rec", ".idx"):
        (tmp_path / f"{name}{suffix}").write_bytes((MXNET_FIXTURES / f"{name}{suffix}").read_bytes())
    return tmp_path / f"{name}.rec"


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RecordIOError, match="nope.rec: no such file"):
        RecordReader(tmp_path / "nope.rec")


def test_truncated_record_names_its_offset(tmp_path):
    path = copy_fixture(tmp_path)
    data = path.read_bytes()
    last_offset = int(read_index(tmp_path / "raw.idx")[1][-1])
    path.write_bytes(data[: last_offset + 10])
    (tmp_path / "raw.idx").unlink()
    with pytest.raises(RecordIOError, match=rf"raw.rec: at byte {last_offset}: truncated record"):
        IndexedRecordReader(path)


def test_truncated_header_names_its_offset(tmp_path):
    path = copy_fixture(tmp_path)
    last_offset = int(read_index(tmp_path / "raw.idx")[1][-1])
    path.write_bytes(path.read_bytes()[: last_offset + 5])
    with pytest.raises(RecordIOError, match=rf"at byte {last_offset}: end of file inside a record header"):
        list(RecordReader(path))


def test_bad_magic_names_its_offset(tmp_path):
    path = copy_fixture(tmp_path)
    offsets = read_index(tmp_path / "raw.idx")[1]
    data = bytearray(path.read_bytes())
    data[offsets[5]] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=rf"at byte {offsets[5]}: bad magic"):
        list(RecordReader(path))


def test_index_past_the_end_names_line_and_offset(tmp_path):
    path = copy_fixture(tmp_path)
    size = path.stat().st_size
    with open(tmp_path / "raw.idx", "a") as index:
        index.write(f"999\t{size + 64}\n")
    with pytest.raises(RecordIOError, match=rf"at byte {size + 64}: .*raw.idx line 65 points past the end"):
        IndexedRecordReader(path)


def test_index_at_a_non_record_names_line_and_offset(tmp_path):
    path = copy_fixture(tmp_path)
    keys, offsets = read_index(tmp_path / "raw.idx")
    (tmp_path / "raw.idx").write_text(f"{keys[0]}\t{offsets[1] + 4}\n")
    with pytest.raises(RecordIOError, match=rf"at byte {offsets[1] + 4}: .*raw.idx line 1 points at no record"):
        IndexedRecordReader(path)


def test_malformed_index_line_names_line(tmp_path):
    path = copy_fixture(tmp_path)
    (tmp_path / "raw.idx").write_text("3\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=r"raw.idx: at byte 4: line 2"):
        IndexedRecordReader(path)


def test_continuation_part_without_first_part(tmp_path):
    path = tmp_path / "bad.rec"
    path.write_bytes(MAGIC_BYTES + struct.pack("<I", (2 << 29) | 4) + b"abcd")
    with pytest.raises(RecordIOError, match="at byte 0: record starts with a continuation part"):
        list(RecordReader(path))


def test_interrupted_writer_leaves_old_files_and_no_temporaries(tmp_path):
    path = copy_fixture(tmp_path)
    before = path.read_bytes(), (tmp_path / "raw.idx").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with RecordWriter(path, index=True) as writer:
            writer.write(b"new")
            raise KeyboardInterrupt
    assert (path.read_bytes(), (tmp_path / "raw.idx").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.idx", "raw.rec"]


def test_writer_replaces_files_only_on_close(tmp_path):
    path = tmp_path / "data.rec"
    writer = RecordWriter(path, index=True)
    writer.write(b"payload")
    assert not path.exists() and not (tmp_path / "data.idx").exists()
    writer.close()
    with IndexedRecordReader(path) as reader:
        assert reader.read_positions([0]) == [b"payload"]
