"""Where the test data lives: MXNet-made files copied into tests/data (tests/data/README.md says what made them)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MXNET_FIXTURES = REPO_ROOT / "tests" / "data"
PASSTHROUGH_RECORDS = 64  # tests/data keeps the first 64 records of MXNet's 800-record passthrough.rec


def fuzz_examples(ci: int) -> int:
    """How many examples a fuzz test tries: `ci` (a few seconds' worth), or FLOW_FUZZ_EXAMPLES for a longer run."""
    return int(os.environ.get("FLOW_FUZZ_EXAMPLES", ci))


def small_image_rec(folder: Path, records: int = 6) -> Path:
    """A .rec + .idx of the first `records` of MXNet's resized.rec (32-pixel JPEGs, one label each)."""
    from flow.recordio import IndexedRecordReader, RecordWriter

    path = folder / "small.rec"
    with IndexedRecordReader(MXNET_FIXTURES / "resized.rec") as reader, RecordWriter(path, index=True) as writer:
        for position in range(records):
            writer.write(reader.read_position(position), key=int(reader.keys[position]))
    return path


def repacked_rec(path: Path, first: int, count: int, first_id: int = 2 ** 40) -> Path:
    """A .rec + .idx of `count` records of MXNet's resized.rec (32x32 JPEGs) from position `first`
    (wrapping around), with header ids first_id + 7 i (past 32 bits by default) and .idx keys i."""
    from flow.recordio import IRHeader, IndexedRecordReader, RecordWriter, pack, unpack

    with IndexedRecordReader(MXNET_FIXTURES / "resized.rec") as reader, RecordWriter(path, index=True) as writer:
        for i in range(count):
            header, image = unpack(reader.read_position((first + i) % len(reader.keys)))
            writer.write(pack(IRHeader(header.flag, header.label, first_id + 7 * i, 0), image), key=i)
    return path


def mutated(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each edit (kind, position, bytes) applied in turn: 0 overwrites there, 1 inserts,
    2 deletes as many bytes as given, 3 cuts the file there; positions wrap around the length."""
    data = bytearray(data)
    for kind, position, chunk in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data[at:at + len(chunk)] = chunk
        elif kind == 1:
            data[at:at] = chunk
        elif kind == 2:
            del data[at:at + len(chunk)]
        else:
            del data[at:]
    return bytes(data)
