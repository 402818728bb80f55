"""Building a batch: its records decoded straight into the batch's slots, augmented, and (for
float32 output) normalized, a slice of `batch_size / nthreads` samples at a time, in the loader's
decoding threads.

Each slice decodes its records with a decoder that releases the GIL into a uint8 NHWC buffer (the
batch array itself for uint8 output), then jitters the colours with numpy and mirrors and
normalizes with C loops (flow/_pixels.c), in chunks that stay in the CPU cache between the two.
A uint8 batch is not mirrored here: it goes to a device that normalizes it, and flips it there by
the batch's mirror flags on the way.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch
import trio

from flow import augment
from flow.augment import AugmentParams
from flow.batch_arrays import BatchArrays
from flow.errors import ImageError
from flow.image import decode
from flow.image_records import ImageRecords
from flow.seeding import derive_seed

if TYPE_CHECKING:
    from flow.actors.loader import LoaderSettings

_CHUNK_BYTES = 192 * 1024  # decoded images per normalize pass: well inside a core's L2 cache


class BatchJob:
    """One batch: which records, its array while slices fill it, then its tensors once `done` is set."""

    def __init__(self, epoch: int, index: int, positions: np.ndarray, pad: int):
        self.epoch, self.index, self.positions = epoch, index, positions
        self.pad = pad  # filler samples at the end; bad records skipped add to them
        self.out: np.ndarray | None = None
        self.params: AugmentParams | None = None
        self.slices_left = 0
        self.bad: list[int] = []  # batch indices of bad records (skip_bad_records)
        self.done = trio.Event()
        self.data: torch.Tensor | None = None
        self.label: torch.Tensor | None = None
        self.ids: np.ndarray | None = None  # the records' IRHeader ids, in the batch's order
        self.mirror: torch.Tensor | None = None  # bool: which samples the consumer flips (uint8 output)
        self.error: BaseException | None = None  # what a slice raised; the loader raises it in order
        self.skipped = 0  # real samples left out as bad


class BatchBuilder:
    """Fills batches of `records` as `settings` say, a slice at a time."""

    def __init__(self, records: ImageRecords, settings: LoaderSettings):
        self.records = records
        self.settings = settings
        slice_size = math.ceil(settings.batch_size / settings.nthreads)
        self.slice_starts = range(0, settings.batch_size, slice_size)
        self.slice_size = slice_size
        self.mean = np.asarray(settings.mean, dtype=np.float32)
        self.inv_std = 1 / np.asarray(settings.std, dtype=np.float32)
        self.float_output = settings.layout == "float32_nchw"
        # The device flips uint8 batches as it normalizes them: a C pass over the batch saved here.
        self.device_mirror = not self.float_output and settings.augment.rand_mirror
        _, height, width = settings.data_shape
        self.image_shape = (height, width, 3)
        self.chunk = max(1, _CHUNK_BYTES // (height * width * 3))
        self.lock = threading.Lock()  # slices of one batch finish in different threads
        self.last_fitted = False  # the last image decoded had the output's size: try the next straight in
        if self.float_output:
            batch_shape, dtype = (settings.batch_size, 3, height, width), np.float32
        else:
            batch_shape, dtype = (settings.batch_size, height, width, 3), np.uint8
        self.arrays = BatchArrays(batch_shape, dtype, keep=settings.prefetch + 4, pinned=settings.pin_memory)

    def prepare(self, job: BatchJob) -> BatchJob:
        """Allocates the batch and draws its augmentation, in the Trio thread (the draws in batch order)."""
        settings = self.settings
        job.out = self.arrays.take()
        if settings.augment.random:  # drawing costs the Trio thread ~70 us a batch: only when needed
            rng = np.random.default_rng(derive_seed(settings.seed, "augment", job.epoch, job.index))
            job.params = augment.draw(settings.augment, rng, settings.batch_size)
        job.slices_left = len(self.slice_starts)
        return job

    def staging(self) -> np.ndarray | None:
        """A worker thread's buffer of decoded uint8 images, normalized from into float batches."""
        return np.empty((self.chunk, *self.image_shape), dtype=np.uint8) if self.float_output else None

    def fill(self, job: BatchJob, start: int, staging: np.ndarray | None) -> bool:
        """Fills one slice of a batch, in a worker thread; True when that completed the batch (or failed it)."""
        stop = min(start + self.slice_size, self.settings.batch_size)
        try:
            bad = self.fill_slice(job.out, job.positions, start, stop, job.params, staging)
        except BaseException as error:  # the loader raises it when this batch's turn comes
            with self.lock:
                first_error, job.error = job.error is None, job.error or error
            return first_error
        with self.lock:
            job.bad += bad
            job.slices_left -= 1
            if job.slices_left or job.error is not None:
                return False
        self.complete(job)
        return True

    def complete(self, job: BatchJob) -> None:
        # fancy indexing: fresh label and id arrays
        out, labels, ids = job.out, self.records.labels[job.positions], self.records.table.ids[job.positions]
        mirror = job.params.mirror if self.device_mirror else None  # drawn for this batch alone: ours to reorder
        if job.bad:
            real = len(out) - job.pad
            job.skipped = sum(1 for index in job.bad if index < real)
            job.pad = move_bad_to_end([out, labels, ids] + ([mirror] if mirror is not None else []), job.bad, real)
        job.data, job.label, job.ids = torch.from_numpy(out), torch.from_numpy(labels), ids
        job.mirror = torch.from_numpy(mirror) if mirror is not None else None
        job.out = job.params = None

    def fill_slice(self, out: np.ndarray, positions: np.ndarray, start: int, stop: int,
                   params: AugmentParams | None, staging: np.ndarray | None) -> list[int]:
        """Decodes, augments and (for float output) normalizes samples start:stop of a batch, through
        `staging` for float output. Returns the batch indices of bad records (when they are skipped)."""
        options = self.settings.augment
        bad = []
        # In chunks small enough that the decoded images are still in the CPU cache when normalized.
        for begin in range(start, stop, self.chunk):
            end = min(begin + self.chunk, stop)
            images = staging[:end - begin] if self.float_output else out[begin:end]
            chunk_params = params[begin:end] if params is not None else None
            bad += self.decode_into(images, positions[begin:end], chunk_params, begin)
            normalized = out[begin:end] if self.float_output else None
            augment.finish(images, chunk_params, options, normalized, self.mean, self.inv_std,
                           flip=not self.device_mirror)
        return bad

    def decode_into(self, images: np.ndarray, positions: np.ndarray, params: AugmentParams | None,
                    first: int) -> list[int]:
        """Decodes the records at `positions` into `images` (output-sized uint8 HWC slots), through the
        geometric augmentation when the image needs it. Returns the batch indices of bad records."""
        records, options = self.records, self.settings.augment
        table, memory = records.table, records.memory
        direct = not options.reshapes  # an image that already has the output size is used as decoded
        max_pixels = self.settings.max_image_pixels
        bad = []
        places = zip(positions.tolist(), table.image_start[positions].tolist(), table.image_end[positions].tolist())
        for index, (position, begin, end) in enumerate(places):
            encoded = memory[begin:end] if begin >= 0 else table.joined[position]
            slot = images[index]
            try:
                if not direct:  # reshaped on its way: decoded at the DCT scale its geometry allows
                    augment.place_encoded(encoded, params, index, options, slot, max_pixels)
                    continue
                image = decode(encoded, out=slot, max_pixels=max_pixels, likely_fits=self.last_fitted)
                # Shared by the worker threads: a race costs at most one header read or one refusal.
                self.last_fitted = image is slot
                if image is not slot:  # another size than the output
                    augment.place(image, params, index, options, slot)
            except ImageError as error:
                if not self.settings.skip_bad_records:
                    raise records.image_error(position, error.message) from None
                bad.append(first + index)
        return bad


def move_bad_to_end(samples: list[np.ndarray], bad: list[int], real: int) -> int:
    """Reorders a batch so that its good real samples come first; the rest is filler. `samples`: the
    batch's per-sample arrays (images, labels, ...), reordered alike. Returns the new pad."""
    size = len(samples[0])
    bad_set = set(bad)
    good_real = [index for index in range(real) if index not in bad_set]
    good_filler = [index for index in range(real, size) if index not in bad_set]
    keep = good_real + good_filler
    if not keep:
        for array in samples:
            array[...] = 0
        return size
    order = keep + [keep[index % len(keep)] for index in range(size - len(keep))]
    for array in samples:
        array[...] = array[order]
    return size - len(good_real)
