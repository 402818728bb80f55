"""Predictions on disk, a batch at a time: `.npy` (one structured array) or `.csv` (one row a record).

    .npy  fields id (uint64) and probabilities (float32, classes), or with top-k: id, classes
          (int64, k, best first) and scores (float32, k): np.load(path)["probabilities"]
    .csv  a header row, then id,p0,p1,... or id,class1,score1,...,classK,scoreK

Only the batch in hand is ever held: the rows are appended as they come, after room for the
`.npy` header, which is written last, when the count is known (padded to the room, which fits
any count).
Floats are written as the shortest text that reads back to the same float32. The file appears
whole or not at all: written under a temporary name, fsynced, then renamed.
"""

from __future__ import annotations

import csv
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from flow.atomic import replace_durably, temporary_path
from flow.errors import FlowError

FORMATS = (".npy", ".csv")
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
# Room for the .npy header, a multiple of 64 (numpy aligns its data so): the field list with any
# count of rows and classes that fit 20 digits takes ~150 bytes.
_NPY_HEADER_ROOM = 256


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most probable classes of each row, best first (ties: the lower class first), and their probabilities."""
    k = min(k, probabilities.shape[1])
    classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return classes, np.take_along_axis(probabilities, classes, axis=1)


class PredictionWriter:
    """Writes batches of (ids, probabilities) to `path` (.npy or .csv); `top_k` > 0 keeps the k best
    classes with their scores instead of every probability. Use as a context manager: the file is in
    place once it exits without an error, and absent (its temporary file removed) when it exits with one."""

    def __init__(self, path: str | os.PathLike, top_k: int = 0):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise FlowError(f"predictions are written as {' or '.join(FORMATS)}, not "
                            f"{self.path.suffix or 'a name without a suffix'}", self.path)
        if top_k < 0:
            raise FlowError(f"top-k: expected k >= 0, got {top_k}")
        self.requested_top_k = top_k
        self.tmp_path = temporary_path(self.path)
        self.file = None
        self.dtype = None  # fixed by the first batch, which says how many classes there are
        self.written = 0

    def __enter__(self) -> PredictionWriter:
        with self._os_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == ".npy":
                self.file = open(self.tmp_path, "wb")
                self.file.write(bytes(_NPY_HEADER_ROOM))
            else:
                self.file = open(self.tmp_path, "w", newline="")
                self.csv = csv.writer(self.file)
        return self

    def write(self, ids: np.ndarray, probabilities: np.ndarray) -> None:
        """Appends one batch: `ids` (n,) and `probabilities` (n, classes)."""
        if self.dtype is None:
            self._start(probabilities.shape[1])
        rows = np.empty(len(ids), dtype=self.dtype)
        rows["id"] = ids
        if self.top_k:
            rows["classes"], rows["scores"] = top_k(probabilities, self.top_k)
        else:
            rows["probabilities"] = probabilities
        with self._os_errors():
            if self.format == ".npy":
                self.file.write(rows.tobytes())
            else:
                self.csv.writerows(self._csv_rows(rows))
        self.written += len(ids)

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self._abandon()
            return
        with self._os_errors():
            if self.dtype is None:  # no records: no classes either
                self._start(0)
            if self.format == ".npy":
                self.file.seek(0)
                self.file.write(self._npy_header(self.written))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            replace_durably(self.tmp_path, self.path)

    def _start(self, classes: int) -> None:
        self.classes, self.top_k = classes, min(self.requested_top_k, classes)
        if self.top_k:
            self.dtype = np.dtype([("id", "<u8"), ("classes", "<i8", (self.top_k,)), ("scores", "<f4", (self.top_k,))])
        else:
            self.dtype = np.dtype([("id", "<u8"), ("probabilities", "<f4", (classes,))])
        if self.format == ".csv":
            with self._os_errors():
                self.csv.writerow(["id", *self._csv_columns()])

    @contextmanager
    def _os_errors(self) -> Iterator[None]:
        """An OSError (a full disk, a folder that cannot be made) as a one-line FlowError, the temporary file gone."""
        try:
            yield
        except OSError as error:
            self._abandon()
            raise FlowError(f"cannot write: {error.strerror}", self.path) from None

    def _abandon(self) -> None:
        if self.file is not None:
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)

    def _npy_header(self, rows: int) -> bytes:
        """NPY 1.0's header for `rows` rows, padded to the room left for it."""
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows,)})
        padding = _NPY_HEADER_ROOM - (len(_NPY_MAGIC) + 2 + len(text) + 1)  # + the closing newline
        if padding < 0:
            raise FlowError(f"too many classes for a .npy header ({self.classes}): write a .csv", self.path)
        text = text + " " * padding + "\n"
        return _NPY_MAGIC + struct.pack("<H", len(text)) + text.encode("latin1")

    def _csv_columns(self) -> list[str]:
        if self.top_k:
            return [f"{kind}{rank}" for rank in range(1, self.top_k + 1) for kind in ("class", "score")]
        return [f"p{klass}" for klass in range(self.classes)]

    def _csv_rows(self, rows: np.ndarray):
        for row in rows:
            if self.top_k:
                cells = [value for pair in zip(row["classes"].tolist(), _floats(row["scores"])) for value in pair]
            else:
                cells = _floats(row["probabilities"])
            yield [int(row["id"]), *cells]


def _floats(values: np.ndarray) -> list[str]:
    """float32 values as the shortest text that reads back to each (numpy's repr of a float32)."""
    return [str(value) for value in values]  # numpy's str of a float32 scalar: its shortest round-trip digits
