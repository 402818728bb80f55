"""A record table opened for decoding: the records a loader may use, their labels at one width,
and their image bytes, sliced from a memory map of the `.rec`."""

from __future__ import annotations

import mmap
import os

import numpy as np

from flow.errors import ImageError
from flow.recordio import RecordTable


class ImageRecords:
    """The image bytes and labels of a table's records; `bad` marks the ones not to use.

    Every record carries `label_width` labels (`label_width` 1: as many as the first usable record
    has); one with another number, one whose label is no class id below `num_classes` (when given,
    and records carry one label each: NaN, 2.5 and -1 are none), or one the table found a problem
    with, is bad. A bad record is an error here unless `skip_bad_records`; all of them bad is one.
    """

    def __init__(self, table: RecordTable, label_width: int, skip_bad_records: bool, num_classes: int = 0):
        self.table = table
        problems = dict(table.problems)
        counts = np.diff(table.label_starts)
        good = np.ones(len(table), dtype=bool)
        good[list(problems)] = False
        first_good = np.flatnonzero(good)
        self.label_width = label_width if label_width > 1 else (int(counts[first_good[0]]) if len(first_good) else 1)
        for position in np.flatnonzero(good & (counts != self.label_width)).tolist():
            problems[position] = (f"record has {counts[position]} labels, expected {self.label_width} "
                                  f"(data.label_width, or as many as the first record has)")
            good[position] = False
        if num_classes and self.label_width == 1:
            labels = table.labels[table.label_starts[:-1][good]]
            with np.errstate(invalid="ignore"):
                not_class = ~((labels >= 0) & (labels < num_classes) & (labels == np.floor(labels)))
            for position in np.flatnonzero(good)[not_class].tolist():
                label = float(table.labels[table.label_starts[position]])
                problems[position] = (f"label {label!r} is not a class id: expected an integer in "
                                      f"[0, {num_classes}) (data.num_classes)")
                good[position] = False
        if problems and not skip_bad_records:
            position, message = min(problems.items())
            raise table.record_error(position, message)
        if len(table) and not good.any():
            raise table.record_error(0, f"no record can be used: all {len(table)} are bad (skipped as "
                                        f"data.skip_bad_records says); the first: {problems[0]}")
        self.bad = ~good
        labels = table.label_rows(self.label_width)
        self.labels = labels[:, 0].copy() if self.label_width == 1 else labels
        with open(table.path, "rb") as file:
            empty = not os.fstat(file.fileno()).st_size  # mmap cannot map it; it has no images to slice anyway
            self.memory = b"" if empty else mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        if isinstance(self.memory, mmap.mmap):
            self.memory.close()

    def image_error(self, position: int, message: str) -> ImageError:
        """The error for a record whose image cannot be decoded or placed."""
        return self.table.record_error(position, message, ImageError)
