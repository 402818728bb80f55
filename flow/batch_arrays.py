"""Batch arrays to fill, each reused once nothing outside the pool refers to it any more.

A fresh array a batch cost the loader's Trio thread ~150 us a batch to free (glibc gives a freed
batch's pages back to the OS) and the decoding threads as much again to fault them back in,
zeroed. A batch handed out stays the consumer's for as long as anything refers to it: its tensor,
a view or a numpy array of it all hold a reference to the array, and CPython counts them exactly.

Pinned (page-locked) arrays are for batches a GPU copies in: a copy from them runs asynchronously,
without a staging copy. Pinning costs far more than the copy, so a pool of them is allocated once
and refilled, as any other.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch


def pinned_empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An array of `shape` in page-locked memory (needs CUDA), the numpy view of the pinned tensor
    that owns the memory (its base, which it keeps alive)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy().view(dtype).reshape(shape)


class BatchArrays:
    def __init__(self, shape: tuple[int, ...], dtype: type, keep: int, pinned: bool = False):
        self.shape, self.dtype, self.keep, self.pinned = shape, dtype, keep, pinned
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
        array = pinned_empty(self.shape, self.dtype) if self.pinned else np.empty(self.shape, dtype=self.dtype)
        if len(self.arrays) <= self.keep:  # a consumer that keeps many batches gets fresh ones past `keep`
            self.arrays.append(array)
        return array
