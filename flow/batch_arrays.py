"""Batch arrays to fill, each reused once nothing outside the pool refers to it any more.

A fresh array a batch cost the loader's Trio thread ~150 us a batch to free (glibc gives a freed
batch's pages back to the OS) and the decoding threads as much again to fault them back in,
zeroed. A batch handed out stays the consumer's for as long as anything refers to it: its tensor,
a view or a numpy array of it all hold a reference to the array, and CPython counts them exactly.
"""

from __future__ import annotations

import sys

import numpy as np


class BatchArrays:
    def __init__(self, shape: tuple[int, ...], dtype: type, keep: int):
        self.shape, self.dtype, self.keep = shape, dtype, keep
        # First a probe that only this list refers to: what its count reads as means "unused" on
        # this interpreter (the loop variable and getrefcount's argument count too).
        self.arrays: list[np.ndarray] = [np.empty(0, dtype=dtype)]

    def take(self) -> np.ndarray:
        """An array of `shape` that nothing else refers to: a kept one, else a fresh one."""
        unused = None
        for array in self.arrays:
            count = sys.getrefcount(array)
            if unused is None:
                unused = count
            elif count == unused:
                return array
        array = np.empty(self.shape, dtype=self.dtype)
        if len(self.arrays) <= self.keep:  # a consumer that keeps many batches gets fresh ones past `keep`
            self.arrays.append(array)
        return array
