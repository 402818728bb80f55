import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.errors import FlowError, ImageError, RecordIOError
from flow.recordio import (
    _LENGTH_MASK,
    MAGIC_BYTES,
    IndexedRecordReader,
    IRHeader,
    RecordReader,
    RecordWriter,
    encode_record,
    index_path_for,
    pack,
    pack_img,
    read_index,
    read_record_table,
    unpack,
    unpack_img,
)
from tests.fixtures import MXNET_FIXTURES, PASSTHROUGH_RECORDS, fuzz_examples, mutated, small_image_rec

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


@pytest.mark.parametrize("line", [f"{2**63}\t0", f"-{2**63 + 1}\t0", f"3\t{2**63}", "3\t-8", f"{10**300}\t0"])
def test_index_fields_out_of_64_bit_range_name_the_line(tmp_path, line):
    path = copy_fixture(tmp_path)
    (tmp_path / "raw.idx").write_text(f"3\t0\n{line}\n")
    with pytest.raises(RecordIOError, match=r"raw.idx: at byte 4: line 2: key or offset out of range"):
        IndexedRecordReader(path)


def test_index_listing_one_record_twice_is_no_index(tmp_path):
    path = copy_fixture(tmp_path)
    keys, offsets = read_index(tmp_path / "raw.idx")
    (tmp_path / "raw.idx").write_text(f"{keys[0]}\t{offsets[0]}\n{keys[1]}\t{offsets[1]}\n{keys[2]}\t{offsets[0]}\n")
    with pytest.raises(RecordIOError, match=rf"at byte {offsets[0]}: .*raw.idx line 3 points at the same record as line 1"):
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


# --------------------------------------------------------------------------- the record table


def records_as_unpack_reads_them(path):
    """[(flag, labels, image bytes)] of every record, one at a time through the reader."""
    with IndexedRecordReader(path) as reader:
        return [(header.flag, np.atleast_1d(np.float32(header.label)).tolist(), image)
                for header, image in map(unpack, reader.read_positions(range(len(reader))))]


def records_in(table):
    """[(flag, labels, image bytes)] of every record, as the table says."""
    data = table.path.read_bytes()
    return [(int(table.flags[position]),
             table.labels[table.label_starts[position]:table.label_starts[position + 1]].tolist(),
             data[table.image_start[position]:table.image_end[position]] if table.image_start[position] >= 0
             else table.joined[position])
            for position in range(len(table))]


@pytest.mark.parametrize("name", ["train", "multilabel", "resized"])
def test_table_holds_what_each_records_header_says_and_where_its_image_is(name):
    table = read_record_table(MXNET_FIXTURES / f"{name}.rec")
    with IndexedRecordReader(MXNET_FIXTURES / f"{name}.rec") as reader:
        assert table.keys.tolist() == reader.keys.tolist() and table.offsets.tolist() == reader.offsets.tolist()
    assert records_in(table) == records_as_unpack_reads_them(table.path)
    assert not table.problems and not table.joined


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(width=32, allow_nan=False), max_size=4),
                          st.binary(max_size=24) | st.just(MAGIC_BYTES * 2)), max_size=8),
       st.booleans())
def test_table_reads_any_image_records_as_unpack_does(tmp_path_factory, records, indexed):
    path = tmp_path_factory.mktemp("table") / "data.rec"
    with RecordWriter(path, index=indexed) as writer:
        for labels, image in records:
            # 0 labels: one in the header. The id puts the magic at an aligned offset: the record in parts.
            label = labels if labels else 1.5
            writer.write(pack(IRHeader(0, label, int.from_bytes(MAGIC_BYTES * 2, "little"), 0), image))
    table = read_record_table(path)
    assert records_in(table) == records_as_unpack_reads_them(path)
    assert sorted(table.joined) == list(range(len(records))) and not table.problems


def test_table_lists_the_records_it_cannot_read_with_what_is_wrong(tmp_path):
    path = tmp_path / "bad.rec"
    with RecordWriter(path, index=True) as writer:
        writer.write(pack(IRHeader(0, 1.0, 0, 0), b"fine"))
        writer.write(b"short")
        writer.write(struct.pack("<IfQQ", 9, 0.0, 0, 0))  # flag 9, and no labels after it
        writer.write(pack(IRHeader(0, 2.0, 0, 0), b"cut off"))
    offsets = read_index(tmp_path / "bad.idx")[1]
    path.write_bytes(path.read_bytes()[:-4])  # the last record loses its end
    table = read_record_table(path)
    assert table.problems == {
        1: "record of 5 bytes is too short for an image record header",
        2: "header says 9 labels but the record has 24 bytes",
        3: f"truncated record: header says 31 bytes, {len(path.read_bytes()) - offsets[3] - 8} left in the file",
    }
    assert table.label_rows(1).tolist() == [[1.0], [0.0], [0.0], [0.0]]
    error = table.record_error(2, "what is wrong")
    assert isinstance(error, RecordIOError)
    assert str(error) == f"{path}: at byte {offsets[2]}: record 2 (#2 in the file): what is wrong"
    assert isinstance(table.record_error(0, "corrupt", ImageError), ImageError)


def test_label_rows_are_the_labels_of_records_with_that_many():
    table = read_record_table(MXNET_FIXTURES / "multilabel.rec")
    rows = table.label_rows(3)
    assert rows.shape == (len(table), 3) and rows.dtype == np.float32
    assert rows.tolist() == [table.labels[start:start + 3].tolist() for start in table.label_starts[:-1]]
    assert not table.label_rows(2).any()


def test_table_of_an_empty_file_has_no_records(tmp_path):
    (tmp_path / "empty.rec").write_bytes(b"")
    table = read_record_table(tmp_path / "empty.rec")
    assert len(table) == 0 and table.label_rows(1).shape == (0, 1)


def test_table_of_missing_files_is_a_record_error(tmp_path):
    with pytest.raises(RecordIOError, match="absent.rec: no such file"):
        read_record_table(tmp_path / "absent.rec")
    (tmp_path / "n.rec").write_bytes((MXNET_FIXTURES / "raw.rec").read_bytes())
    with pytest.raises(RecordIOError, match="absent.idx: no such file"):  # a given .idx must be there
        read_record_table(tmp_path / "n.rec", tmp_path / "absent.idx")
    assert len(read_record_table(tmp_path / "n.rec")) == 64  # none given and none beside it: the file is scanned


# Edits that hit RecordIO's fields: lengths, cflags, the magic, IRHeader flags, label floats, JPEG headers.
INTERESTING = st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", MAGIC_BYTES, struct.pack("<I", _LENGTH_MASK),
                               struct.pack("<I", (1 << 29) | 8), struct.pack("<I", (3 << 29) | 4),
                               struct.pack("<f", float("nan")), struct.pack("<f", 2.5), b"\xff\xd8", b"\xff\xc0"])
EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.binary(min_size=1, max_size=8) | INTERESTING),
                 min_size=1, max_size=4)
INDEX_LINES = st.lists(st.sampled_from(["0\t0", f"{2**63}\t0", "1\t-4", "1\t999999999999", "x", "", "1 2 3",
                                        f"{10**30}\t{10**30}", "2\t4", "3\t24"]), max_size=3)


@settings(max_examples=fuzz_examples(100), deadline=None)
@given(EDITS, INDEX_LINES, st.booleans(), st.booleans())
def test_mutated_files_read_or_fail_with_flows_own_errors(tmp_path_factory, edits, index_lines, keep_index, skip):
    """The reader, the record table and the decoding of every usable image, over a damaged `.rec`
    and `.idx`: every failure is a FlowError (set FLOW_FUZZ_EXAMPLES for a longer run)."""
    from flow.image import decode
    from flow.image_records import ImageRecords

    path = small_image_rec(tmp_path_factory.mktemp("fuzz"))
    path.write_bytes(mutated(path.read_bytes(), edits))
    index = index_path_for(path)
    if keep_index:
        index.write_text(index.read_text() + "".join(line + "\n" for line in index_lines))
    else:
        index.unlink()
    try:
        list(RecordReader(path))
    except FlowError:
        pass
    try:
        records = ImageRecords(read_record_table(path), 1, skip, num_classes=10)
    except FlowError:
        return
    try:
        table = records.table
        for position in np.flatnonzero(~records.bad).tolist():
            begin, end = table.image_start[position], table.image_end[position]
            image = records.memory[begin:end] if begin >= 0 else table.joined[position]
            try:
                decode(image, max_pixels=2**16)
            except FlowError:
                pass
    finally:
        records.close()


@pytest.mark.parametrize("name", ["val.rec", "multilabel.rec"])
def test_the_record_table_holds_each_records_header_id(name, tmp_path):
    from flow.recordio import IRHeader, IndexedRecordReader, RecordWriter, pack, read_record_table, unpack

    path = tmp_path / name
    with IndexedRecordReader(MXNET_FIXTURES / name) as reader, RecordWriter(path, index=True) as writer:
        for position in range(len(reader.keys)):  # ids past 32 bits, apart from keys and positions
            header, image = unpack(reader.read_position(position))
            writer.write(pack(IRHeader(header.flag, header.label, 2 ** 63 + 11 * position, 0), image), key=position)
    table = read_record_table(path)
    assert table.ids.dtype == np.uint64
    assert table.ids.tolist() == [2 ** 63 + 11 * position for position in range(len(table))]
