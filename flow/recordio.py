"""MXNet / dmlc-core RecordIO, byte for byte: `.rec` parts, `.idx` index files, `IRHeader`.

A file is a sequence of parts: magic (uint32 LE), lrec (uint32 LE: cflag in the top 3 bits,
length in the low 29), the bytes, zero padding to a multiple of 4. A payload holding the magic
at a 4-byte aligned offset is split there into parts (cflag 1 first, 2 middle, 3 last) with the
magic dropped; the reader puts it back. The `.idx` is text: ``key<TAB>offset`` per record.

Reading goes through a memory map, so a batch of records is one call of slicing, and random
access through the index costs no seek. `read_record_table` reads where every image record is and
what its IRHeader says once, with vectorized numpy, into plain arrays. Writers write to temporary
names and rename on close, `.idx` last, so an interrupted write never leaves an index pointing at
bytes that are not there.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from flow.atomic import replace_durably, temporary_path
from flow.errors import FlowError, RecordIOError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_PART_HEADER = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_HEADER.size  # 24


def _padding(length: int) -> int:
    return -length % 4


def encode_record(payload: bytes) -> bytes:
    """One record as the bytes dmlc-core's RecordIOWriter writes for it (parts and padding)."""
    payload = bytes(payload)
    size = len(payload)
    aligned_end = size - size % 4  # only whole aligned words are searched for the magic
    pieces = []
    start = 0
    hit = payload.find(MAGIC_BYTES, 0, aligned_end)
    while hit >= 0:
        if hit % 4 == 0:
            cflag = 1 if start == 0 else 2
            pieces += [MAGIC_BYTES, _lrec(cflag, hit - start), payload[start:hit]]
            start = hit + 4
            hit = payload.find(MAGIC_BYTES, start, aligned_end)
        else:
            hit = payload.find(MAGIC_BYTES, hit + 1, aligned_end)
    pieces += [MAGIC_BYTES, _lrec(3 if start else 0, size - start), payload[start:]]
    pieces.append(b"\0" * _padding(size))
    return b"".join(pieces)


def _lrec(cflag: int, length: int) -> bytes:
    if length > _LENGTH_MASK:
        raise ValueError(f"a RecordIO part holds at most {_LENGTH_MASK} bytes, got {length}")
    return struct.pack("<I", (cflag << 29) | length)


# --------------------------------------------------------------------------- reading


class RecordReader:
    """A `.rec` file, memory-mapped: sequential iteration and reads at byte offsets."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                # mmap cannot map an empty file; an empty .rec is simply one with no records.
                self._data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            raise RecordIOError("no such file", self.path) from None
        except OSError as error:
            raise RecordIOError(f"cannot read: {error.strerror}", self.path) from None
        self.size = size

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _part(self, offset: int) -> tuple[int, int, int, int]:
        """(cflag, start, length, next offset) of the part at `offset`, checked against the file."""
        if offset + 8 > self.size:
            what = "end of file inside a record header" if offset < self.size else "offset past the end of the file"
            raise RecordIOError(f"{what} (file is {self.size} bytes)", self.path, offset)
        magic, lrec = _PART_HEADER.unpack_from(self._data, offset)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08x}, not a RecordIO record (expected 0x{MAGIC:08x})", self.path, offset)
        length = lrec & _LENGTH_MASK
        start = offset + 8
        if start + length > self.size:
            raise RecordIOError(
                f"truncated record: header says {length} bytes, {self.size - start} left in the file", self.path, offset
            )
        # Missing padding after the file's last part loses no data; dmlc-core reads such files too.
        return lrec >> 29, start, length, min(start + length + _padding(length), self.size)

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """The payload of the record starting at `offset`, and the offset of the next record."""
        cflag, start, length, next_offset = self._part(offset)
        if cflag == 0:
            return self._data[start : start + length], next_offset
        if cflag != 1:
            raise RecordIOError(f"record starts with a continuation part (cflag {cflag})", self.path, offset)
        chunks = [self._data[start : start + length]]
        while cflag != 3:
            part_offset = next_offset
            if part_offset >= self.size:
                raise RecordIOError("truncated record: file ends before its last part", self.path, offset)
            cflag, start, length, next_offset = self._part(part_offset)
            if cflag not in (2, 3):
                raise RecordIOError(f"expected a continuation part, found cflag {cflag}", self.path, part_offset)
            chunks += [MAGIC_BYTES, self._data[start : start + length]]
        return b"".join(chunks), next_offset

    def skip_at(self, offset: int) -> int:
        """The offset of the record after the one at `offset`, checking its parts but copying nothing."""
        cflag, _, _, next_offset = self._part(offset)
        if cflag not in (0, 1):
            raise RecordIOError(f"record starts with a continuation part (cflag {cflag})", self.path, offset)
        while cflag not in (0, 3):
            part_offset = next_offset
            if part_offset >= self.size:
                raise RecordIOError("truncated record: file ends before its last part", self.path, offset)
            cflag, _, _, next_offset = self._part(part_offset)
            if cflag not in (2, 3):
                raise RecordIOError(f"expected a continuation part, found cflag {cflag}", self.path, part_offset)
        return next_offset

    def read_batch(self, offsets: Sequence[int]) -> list[bytes]:
        """The payloads of the records at `offsets`: one call for a whole batch."""
        read_at = self.read_at
        offsets = offsets.tolist() if isinstance(offsets, np.ndarray) else offsets
        return [read_at(offset)[0] for offset in offsets]

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(offset, payload) of every record, in file order."""
        offset = 0
        while offset < self.size:
            payload, next_offset = self.read_at(offset)
            yield offset, payload
            offset = next_offset

    def __iter__(self) -> Iterator[bytes]:
        for _, payload in self.records():
            yield payload

    def scan_offsets(self) -> np.ndarray:
        """The start offset of every record, found by walking the part headers (no index needed)."""
        offsets = []
        offset = 0
        while offset < self.size:
            offsets.append(offset)
            offset = self.skip_at(offset)
        return np.asarray(offsets, dtype=np.int64)

    def is_record_at(self, offset: int) -> bool:
        """Whether a record's first part starts at `offset` (used to validate `.idx` entries)."""
        if offset < 0 or offset + 8 > self.size or self._data[offset : offset + 4] != MAGIC_BYTES:
            return False
        return _PART_HEADER.unpack_from(self._data, offset)[1] >> 29 in (0, 1)


def index_path_for(rec_path: str | os.PathLike) -> Path:
    """The `.idx` beside a `.rec`: same name, `.idx` suffix (as im2rec writes them)."""
    return Path(rec_path).with_suffix(".idx")


def read_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an `.idx` file, in its line order."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError("no such file", path) from None
    keys, offsets = [], []
    position = 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        fields = line.split()
        if fields:
            if len(fields) != 2:
                raise RecordIOError(f"line {number}: expected 'key<TAB>offset', got {line.strip()!r}", path, position)
            try:
                key, offset = int(fields[0]), int(fields[1])
            except ValueError:
                raise RecordIOError(
                    f"line {number}: key and offset must be integers, got {line.strip()!r}"[:200], path, position
                ) from None
            if not -2**63 <= key < 2**63 or not 0 <= offset < 2**63:  # as dmlc-core reads them: 64-bit
                raise RecordIOError(f"line {number}: key or offset out of range (a 64-bit integer; the offset "
                                    f"not negative), got {line.strip()!r}"[:200], path, position)
            keys.append(key)
            offsets.append(offset)
        position += len(line)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class IndexedRecordReader(RecordReader):
    """A `.rec` with random access by position or key, through its `.idx`, or by scanning when it has none.

    Every index entry is checked on open: an offset past the end or one that is not the start of
    a record is an error naming the `.idx` line and the offset.
    """

    def __init__(self, path: str | os.PathLike, index_path: str | os.PathLike | None = None):
        super().__init__(path)
        index_path = index_path_for(path) if index_path is None else Path(index_path)
        if index_path.exists():
            self.index_path: Path | None = index_path
            self.keys, self.offsets = read_index(index_path)
            self._check_index()
        else:
            self.index_path = None
            self.offsets = self.scan_offsets()
            self.keys = np.arange(len(self.offsets), dtype=np.int64)
        self._position_of_key = None

    def _check_index(self) -> None:
        line_of: dict[int, int] = {}
        for line, offset in enumerate(self.offsets.tolist(), start=1):
            if offset in line_of:  # else the record would be read twice an epoch, and another never
                raise RecordIOError(f"{self.index_path} line {line} points at the same record as line "
                                    f"{line_of[offset]}", self.path, offset)
            line_of[offset] = line
            if offset >= self.size or offset < 0:
                raise RecordIOError(
                    f"{self.index_path} line {line} points past the end of the file ({self.size} bytes)",
                    self.path,
                    offset,
                )
            if not self.is_record_at(offset):
                raise RecordIOError(f"{self.index_path} line {line} points at no record", self.path, offset)

    def __len__(self) -> int:
        return len(self.offsets)

    def read_position(self, position: int) -> bytes:
        """The payload of the `position`-th record of the index."""
        return self.read_at(int(self.offsets[position]))[0]

    def read_key(self, key: int) -> bytes:
        """The payload of the record with `key` (MXIndexedRecordIO.read_idx)."""
        if self._position_of_key is None:
            self._position_of_key = {key: position for position, key in enumerate(self.keys.tolist())}
        try:
            return self.read_position(self._position_of_key[key])
        except KeyError:
            raise RecordIOError(f"no record with key {key}", self.index_path or self.path) from None

    def read_positions(self, positions: Sequence[int]) -> list[bytes]:
        """The payloads of the records at these index positions: one call for a whole batch."""
        return self.read_batch(self.offsets[np.asarray(positions, dtype=np.int64)])


# --------------------------------------------------------------------------- writing


class RecordWriter:
    """Writes a `.rec`, and its `.idx` when `index_path` is given (or `index=True`: beside it).

    Use as a context manager: on a clean exit both files are fsynced and renamed into place
    (`.rec` first, `.idx` last); on an exception the temporary files are removed and any old
    files are left as they were.
    """

    def __init__(self, path: str | os.PathLike, index_path: str | os.PathLike | None = None, *, index: bool = False):
        self.path = Path(path)
        if index and index_path is None:
            index_path = index_path_for(path)
        self.index_path = None if index_path is None else Path(index_path)
        self._tmp_path = temporary_path(self.path)
        self._file = open(self._tmp_path, "wb")
        self._index_lines: list[str] = []
        self._position = 0
        self._count = 0

    def tell(self) -> int:
        return self._position

    def write(self, payload: bytes, key: int | None = None) -> int:
        """Appends one record; returns its byte offset. `key` defaults to the record's number."""
        offset = self._position
        data = encode_record(payload)
        self._file.write(data)
        self._position += len(data)
        if self.index_path is not None:
            self._index_lines.append(f"{self._count if key is None else int(key)}\t{offset}\n")
        self._count += 1
        return offset

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.index_path is not None:
            index_tmp = temporary_path(self.index_path)
            with open(index_tmp, "w") as index_file:
                index_file.writelines(self._index_lines)
                index_file.flush()
                os.fsync(index_file.fileno())
            # An old index must never describe the new .rec: drop it before the .rec moves in.
            self.index_path.unlink(missing_ok=True)
            replace_durably(self._tmp_path, self.path)
            replace_durably(index_tmp, self.index_path)
        else:
            replace_durably(self._tmp_path, self.path)

    def abort(self) -> None:
        """Drops what was written; the files at `path` and `index_path` stay as they were."""
        if not self._file.closed:
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- image records


class IRHeader(NamedTuple):
    """MXNet's image record header: flag 0 = one label here; flag N = N float32 labels follow."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Header + payload, as mxnet.recordio.pack: a sequence label becomes flag N and N floats."""
    header = IRHeader(*header)
    if np.ndim(header.label) == 0:
        head = _IR_HEADER.pack(0, float(header.label), header.id, header.id2)
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype=np.float32).ravel()
    head = _IR_HEADER.pack(labels.size, 0.0, header.id, header.id2)
    return head + labels.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """(header, payload) of an image record; a multi-label header carries a float32 array."""
    if len(record) < IR_HEADER_SIZE:
        raise RecordIOError(f"record of {len(record)} bytes is too short for an image record header ({IR_HEADER_SIZE})")
    header = IRHeader(*_IR_HEADER.unpack_from(record, 0))
    start = IR_HEADER_SIZE
    if header.flag > 0:
        end = start + 4 * header.flag
        if end > len(record):
            raise RecordIOError(f"header says {header.flag} labels but the record has {len(record)} bytes")
        header = header._replace(label=np.frombuffer(record, np.float32, header.flag, start).copy())
        start = end
    return header, record[start:]


def pack_img(header: IRHeader, image: np.ndarray, quality: int = 95, encoding: str = ".jpg") -> bytes:
    """Header + `image` (RGB, HxWx3 uint8, or HxW gray) encoded as JPEG or PNG."""
    from flow.image import encode

    return pack(header, encode(image, encoding=encoding, quality=quality))


def unpack_img(record: bytes) -> tuple[IRHeader, np.ndarray]:
    """(header, RGB image). Note: mxnet.recordio.unpack_img returns BGR; flow is RGB throughout."""
    from flow.image import decode

    header, payload = unpack(record)
    return header, decode(payload)


# --------------------------------------------------------------------------- the record table


@dataclass(frozen=True, eq=False)
class RecordTable:
    """Where each image record of a `.rec` is and what its IRHeader says: arrays by position in the
    `.idx` (in the file, without one). Records whose header cannot be read are in `problems`, not
    raised: whether to skip them or stop is the reader's call.
    """

    path: Path
    keys: np.ndarray  # int64: the .idx keys (positions, without an .idx)
    ids: np.ndarray  # uint64: IRHeader id of each record (0 for one whose header cannot be read)
    offsets: np.ndarray  # int64: where each record's first part starts
    flags: np.ndarray  # int64: IRHeader flag: N labels follow the header; 0: one label, in it
    labels: np.ndarray  # float32: every record's labels, one record after another
    label_starts: np.ndarray  # int64, one more than records: record i's are labels[label_starts[i]:label_starts[i + 1]]
    image_start: np.ndarray  # int64: record i's image is the file's bytes image_start[i]:image_end[i],
    image_end: np.ndarray  # or joined[i] where image_start[i] is -1
    joined: dict[int, bytes]  # the images of records in several parts (their bytes hold the magic; rare)
    problems: dict[int, str]  # position: what is wrong with its record (it has no labels)

    def __len__(self) -> int:
        return len(self.offsets)

    def label_rows(self, width: int) -> np.ndarray:
        """(records, width) float32: the labels of each record that has `width` of them; zeros for the others."""
        starts = self.label_starts[:-1]
        fits = self.label_starts[1:] - starts == width
        if fits.all():  # the usual file: its labels are the rows already
            return self.labels.reshape(len(self), width).copy()
        rows = np.zeros((len(self), width), dtype=np.float32)
        rows[fits] = self.labels[starts[fits, None] + np.arange(width)]
        return rows

    def record_error(self, position: int, message: str, kind: type[FlowError] = RecordIOError) -> FlowError:
        """An error about the record at `position`, naming its key, position and byte offset."""
        return kind(f"record {self.keys[position]} (#{position} in the file): {message}", self.path,
                    int(self.offsets[position]))


def read_record_table(path: str | os.PathLike, index_path: str | os.PathLike | None = None) -> RecordTable:
    """The table of the image records of `path`, through `index_path` (None: the `.idx` beside it,
    or a scan of the file when there is none). A bad `.idx` or file is an error here."""
    if index_path is not None and not Path(index_path).exists():
        raise RecordIOError("no such file", index_path)
    with IndexedRecordReader(path, index_path) as reader:
        return _read_headers(reader)


def _read_headers(reader: IndexedRecordReader) -> RecordTable:
    """Every record's part header and IRHeader at once, with numpy, from the reader's memory map."""
    size = reader.size
    data = np.frombuffer(reader._data, dtype=np.uint8) if size else np.zeros(8, dtype=np.uint8)
    offsets = reader.offsets
    problems: dict[int, str] = {}
    start = offsets + 8
    lrec = _u32(data, offsets + 4)
    length = (lrec & _LENGTH_MASK).astype(np.int64)
    whole = (lrec >> 29) == 0
    end = start + length
    truncated = whole & (end > size)
    short = whole & ~truncated & (length < IR_HEADER_SIZE)
    readable = whole & ~truncated & ~short
    flag = np.where(readable, _u32(data, np.where(readable, start, 0)), 0).astype(np.int64)
    ids = np.where(readable, _u64(data, np.where(readable, start + 8, 0)), np.uint64(0))
    image_start = np.where(readable, start + IR_HEADER_SIZE + 4 * flag, -1)
    overflow = readable & (image_start > end)
    for position in np.flatnonzero(truncated).tolist():
        problems[position] = (f"truncated record: header says {length[position]} bytes, "
                              f"{size - start[position]} left in the file")
    for position in np.flatnonzero(short).tolist():
        problems[position] = f"record of {length[position]} bytes is too short for an image record header"
    for position in np.flatnonzero(overflow).tolist():
        problems[position] = f"header says {flag[position]} labels but the record has {length[position]} bytes"

    # Records in several parts: joined once, their header taken from the joined bytes.
    joined: dict[int, bytes] = {}
    joined_labels: dict[int, np.ndarray] = {}
    for position in np.flatnonzero(~whole).tolist():
        try:
            header, image = unpack(reader.read_at(int(offsets[position]))[0])
        except RecordIOError as error:
            problems[position] = error.message
            continue
        joined[position] = image
        joined_labels[position] = np.atleast_1d(np.asarray(header.label, dtype=np.float32))
        flag[position] = header.flag
        ids[position] = header.id

    # Labels: the header's float when flag is 0, else the floats after the header.
    good = np.ones(len(offsets), dtype=bool)
    good[list(problems)] = False
    counts = np.where(good, np.maximum(flag, 1), 0)
    label_starts = np.zeros(len(offsets) + 1, dtype=np.int64)
    np.cumsum(counts, out=label_starts[1:])
    label_at = np.where(good & whole, start + np.where(flag == 0, 4, IR_HEADER_SIZE), 0)
    if not (counts == 1).all():  # else (one label a record, the usual file) label_at is already one per label
        # Label j of record i is at label_at[i] + 4 j in the file, and at label_starts[i] + j in `labels`.
        label_at = np.repeat(label_at - 4 * label_starts[:-1], counts) + 4 * np.arange(label_starts[-1])
    labels = _f32(data, label_at)
    for position, values in joined_labels.items():
        labels[label_starts[position]:label_starts[position + 1]] = values
    return RecordTable(reader.path, reader.keys, ids, offsets, flag, labels, label_starts, image_start, end, joined, problems)


def _u32(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return data[np.asarray(at)[..., None] + np.arange(4)].view("<u4")[..., 0]


def _u64(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return data[np.asarray(at)[..., None] + np.arange(8)].view("<u8")[..., 0]


def _f32(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return data[np.asarray(at)[..., None] + np.arange(4)].view("<f4")[..., 0]
