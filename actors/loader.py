"""The loader actor: a `.rec` file in, shuffled, sharded, decoded and augmented batches out.

Per epoch the shard's records are put in that epoch's order (a permutation seeded by the seed
and the epoch only, so a resumed run replays it) and cut into batches as `last_batch` says (and,
with `epoch_batches`, cut short or cycled through to that many batches).
Each batch is one preallocated tensor; its slices go to `nthreads` worker threads that live as
long as the loader, each of which decodes its records with a decoder that releases the GIL,
straight into a uint8 NHWC buffer (the batch tensor itself for uint8 output), then jitters the
slice's colours with numpy and mirrors and normalizes it with C loops (flow/_pixels.c). Where
the record offsets, image bytes and labels are is read once, from the headers, with vectorized
numpy when the file is opened.

Batches leave in order on the channel. At most `prefetch` batches are being built or waiting
to be sent, so memory stays flat however slow the consumer; give the loader an unbuffered
channel for exactly that bound (a buffered one adds its buffer).
"""

from __future__ import annotations

import math
import mmap
import os
import queue
import sys
import threading
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trio

from flow import augment
from flow.augment import AugmentParams, AugmentSettings
from flow.errors import ConfigError, ImageError, RecordIOError, unwrapped_errors
from flow.image import decode
from flow.recordio import IR_HEADER_SIZE, IndexedRecordReader, unpack
from flow.seeding import derive_seed

LAST_BATCH_MODES = ("pad", "discard", "roll_over")
LAYOUTS = ("float32_nchw", "uint8_nhwc")
SYNTHETIC_BATCHES = 500  # data.py's SyntheticDataIter: 500 batches an epoch when num_examples is unknown

_LENGTH_MASK = (1 << 29) - 1
_CHUNK_BYTES = 192 * 1024  # decoded images per normalize pass: well inside a core's L2 cache


@dataclass(frozen=True)
class Batch:
    epoch: int
    index: int  # batch number within the epoch
    data: torch.Tensor  # float32 NCHW normalized, or uint8 NHWC; the consumer's until it drops every reference
    label: torch.Tensor  # float32, (batch,) or (batch, label_width)
    pad: int  # the last `pad` samples are filler, not part of the epoch (MXNet's DataBatch.pad)


@dataclass(frozen=True)
class EpochEnd:
    """Sent after the last Batch of an epoch."""

    epoch: int
    batches: int
    samples: int  # real samples sent, pads not counted
    skipped: int = 0  # bad records left out (skip_bad_records = true)


@dataclass(frozen=True)
class LoaderSettings:
    path: str  # the .rec file
    data_shape: tuple[int, int, int]  # C, H, W of one output image
    batch_size: int
    index_path: str = ""  # empty: the .idx beside `path`, or scan the file when there is none
    nthreads: int = 4
    prefetch: int = 2
    shuffle: bool = False
    num_parts: int = 1
    part_index: int = 0
    last_batch: str = "pad"
    epoch_batches: int = 0  # 0: the batches `last_batch` cuts; else exactly this many an epoch (see _resized)
    layout: str = "float32_nchw"
    label_width: int = 1  # 1: as many labels as the records carry
    skip_bad_records: bool = False
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    augment: AugmentSettings = AugmentSettings()
    seed: int = 0
    benchmark: bool = False  # synthetic random batches, no IO
    num_classes: int = 1000  # benchmark labels
    num_examples: int = 0  # benchmark epoch size (0: SYNTHETIC_BATCHES batches)

    def __post_init__(self):
        if self.data_shape[0] != 3:
            raise ConfigError(f"data.image_shape: the loader makes RGB images (3 channels), got {self.data_shape}")
        if self.last_batch not in LAST_BATCH_MODES:
            raise ConfigError(f"data.last_batch: expected one of {LAST_BATCH_MODES}, got {self.last_batch!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"data.layout: expected one of {LAYOUTS}, got {self.layout!r}")
        if not 0 <= self.part_index < self.num_parts:
            raise ConfigError(f"data.part_index: expected 0 <= part_index < num_parts ({self.num_parts}), "
                              f"got {self.part_index}")
        if min(self.batch_size, self.nthreads, self.prefetch) < 1:
            raise ConfigError("data.batch_size, data.data_nthreads and data.prefetch must be positive")


async def loader(settings: LoaderSettings, send_channel: trio.MemorySendChannel,
                 begin_epoch: int = 0, num_epochs: int = 1) -> None:
    """Sends each epoch's Batches, then its EpochEnd, for `num_epochs` epochs from `begin_epoch`."""
    with send_channel:  # sync close: an async one could let Cancelled hide our error
        with unwrapped_errors():
            if settings.benchmark:
                await _send_synthetic(settings, send_channel, begin_epoch, num_epochs)
                return
            records = await trio.to_thread.run_sync(_Records, settings)
            try:
                await _send_batches(records, settings, send_channel, begin_epoch, num_epochs)
            finally:
                records.close()


# --------------------------------------------------------------------------- the records


class _Records:
    """An open `.rec`: where each record's image bytes are and every label, read once from the headers.

    Records split into several parts (their bytes hold the RecordIO magic; rare) are joined once
    here and kept in memory; all others are sliced from a memory map when decoded.
    """

    def __init__(self, settings: LoaderSettings):
        self.path = Path(settings.path)
        index_path = Path(settings.index_path) if settings.index_path else None
        if index_path is not None and not index_path.exists():
            raise RecordIOError("no such file", index_path)
        with IndexedRecordReader(self.path, index_path) as reader:
            self.keys, self.offsets = reader.keys, reader.offsets
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                self.memory = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            problems = self._read_headers(reader, size, settings.label_width)
        if problems and not settings.skip_bad_records:
            position, message = min(problems.items())
            self.close()
            raise self.error(position, message, RecordIOError)
        self.bad = np.zeros(len(self.offsets), dtype=bool)
        self.bad[list(problems)] = True

    def _read_headers(self, reader: IndexedRecordReader, size: int, label_width: int) -> dict[int, str]:
        """Fills image_start/image_end/joined/labels; returns {position: what is wrong} for bad records."""
        data = np.frombuffer(self.memory, dtype=np.uint8) if size else np.zeros(8, dtype=np.uint8)
        offsets = self.offsets
        count = len(offsets)
        problems: dict[int, str] = {}
        start = offsets + 8
        lrec = _u32(data, offsets + 4)
        length = (lrec & _LENGTH_MASK).astype(np.int64)
        whole = (lrec >> 29) == 0
        end = start + length
        truncated = whole & (end > size)
        short = whole & ~truncated & (length < IR_HEADER_SIZE)
        readable = whole & ~truncated & ~short
        header_at = np.where(readable, start, 0)
        flag = np.where(readable, _u32(data, header_at), 0).astype(np.int64)
        image_start = np.where(readable, start + IR_HEADER_SIZE + 4 * flag, -1)
        overflow = readable & (image_start > end)
        for position in np.flatnonzero(truncated):
            problems[position] = (f"truncated record: header says {length[position]} bytes, "
                                  f"{size - start[position]} left in the file")
        for position in np.flatnonzero(short):
            problems[position] = f"record of {length[position]} bytes is too short for an image record header"
        for position in np.flatnonzero(overflow):
            problems[position] = f"header says {flag[position]} labels but the record has {length[position]} bytes"

        # Records in several parts: join them once, and take their header from the joined bytes.
        self.joined: dict[int, bytes] = {}
        joined_labels: dict[int, np.ndarray] = {}
        for position in np.flatnonzero(~whole):
            try:
                header, image = unpack(reader.read_at(int(offsets[position]))[0])
            except RecordIOError as error:
                problems[position] = error.message
                continue
            self.joined[position] = image
            joined_labels[position] = np.atleast_1d(np.asarray(header.label, dtype=np.float32))
            flag[position] = header.flag

        good = np.ones(count, dtype=bool)
        good[list(problems)] = False
        widths = np.maximum(flag, 1)
        first_good = np.flatnonzero(good)
        self.label_width = label_width if label_width > 1 else (int(widths[first_good[0]]) if len(first_good) else 1)
        for position in np.flatnonzero(good & (widths != self.label_width)):
            problems[position] = (f"record has {widths[position]} labels, expected {self.label_width} "
                                  f"(data.label_width, or as many as the first record has)")
            good[position] = False

        # Labels: the header's float when flag is 0, else the floats after the header.
        width = self.label_width
        label_at = np.where(good & whole, start + np.where(flag == 0, 4, IR_HEADER_SIZE), 0)
        labels = _f32(data, label_at[:, None] + 4 * np.arange(width))
        labels[~good] = 0
        for position, values in joined_labels.items():
            if good[position]:
                labels[position] = values[:width]
        self.labels = labels[:, 0].copy() if width == 1 else labels
        self.image_start = np.where(whole, image_start, -1)
        self.image_end = end
        return problems

    def close(self) -> None:
        if isinstance(self.memory, mmap.mmap):
            self.memory.close()

    def error(self, position: int, message: str, kind: type = ImageError):
        return kind(f"record {self.keys[position]} (#{position} in the file): {message}", self.path,
                    int(self.offsets[position]))

    def shard(self, num_parts: int, part_index: int) -> tuple[np.ndarray, int]:
        """The positions of this shard's good records, and how many bad ones it leaves out.

        A shard is a contiguous run of records, as MXNet's num_parts / part_index; sizes differ by
        at most one record.
        """
        count = len(self.offsets)
        begin, end = count * part_index // num_parts, count * (part_index + 1) // num_parts
        positions = np.arange(begin, end)
        good = positions[~self.bad[begin:end]]
        return good, len(positions) - len(good)


def _u32(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return data[np.asarray(at)[..., None] + np.arange(4)].view("<u4")[..., 0]


def _f32(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return data[np.asarray(at)[..., None] + np.arange(4)].view("<f4")[..., 0]


# --------------------------------------------------------------------------- epochs and batches


def _epoch_order(positions: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return positions
    return positions[np.random.default_rng(derive_seed(seed, "shuffle", epoch)).permutation(len(positions))]


def _plan_epoch(order_of: Callable[[int], np.ndarray], count: int, batch_size: int, last_batch: str,
                epoch: int) -> list[tuple[np.ndarray, int]]:
    """(record positions, pad) of each batch of `epoch`, given each epoch's order of `count` records.

    pad: the last short batch is filled up from the start of the epoch's order. discard: it is
    dropped. roll_over: the epochs are one stream, cut into whole batches; an epoch's batches
    are those that end inside it, so its first batch starts with the previous epoch's leftovers
    (recomputed from the seed, so a resumed run gets them too).
    """
    if count == 0:
        return []
    if last_batch == "roll_over":
        first, stop = epoch * count // batch_size, (epoch + 1) * count // batch_size
        begin, end = first * batch_size, stop * batch_size  # positions in the stream of all epochs
        if end == begin:
            return []
        stream = np.concatenate([order_of(e) for e in range(begin // count, (end - 1) // count + 1)])
        offset = begin // count * count
        return [(stream[b - offset:b - offset + batch_size], 0) for b in range(begin, end, batch_size)]
    order = order_of(epoch)
    batches = [(order[b:b + batch_size], 0) for b in range(0, count - batch_size + 1, batch_size)]
    rest = count % batch_size
    if rest and last_batch == "pad":
        filler = np.resize(order, batch_size - rest)  # cycles through the order when it is shorter than the fill
        batches.append((np.concatenate([order[count - rest:], filler]), batch_size - rest))
    return batches


def _resized(plan: list[tuple[np.ndarray, int]], batches: int, settings: LoaderSettings,
             epoch: int) -> list[tuple[np.ndarray, int]]:
    """fit.py's ResizeIter: exactly `batches` batches, so that every process of a dist job runs the same
    number of updates (each update is an all_reduce they all take part in) whatever its shard holds.

    A plan with more batches is cut short; one with fewer starts over from its first batch.
    """
    if not plan:
        raise ConfigError(f"data.batch_size: shard {settings.part_index} of {settings.num_parts} has no batch "
                          f"in epoch {epoch} (last_batch = {settings.last_batch!r}), but every process must "
                          f"run {batches} an epoch", settings.path)
    return [plan[index % len(plan)] for index in range(batches)]


class _Job:
    """One batch: which records, its output array while slices fill it, then the Batch once `done` is set."""

    def __init__(self, epoch: int, index: int, positions: np.ndarray, pad: int):
        self.epoch, self.index, self.positions, self.pad = epoch, index, positions, pad
        self.out: np.ndarray | None = None
        self.params: AugmentParams | None = None
        self.slices_left = 0
        self.bad: list[int] = []  # batch indices of bad records (skip_bad_records)
        self.done = trio.Event()
        self.batch: Batch | None = None
        self.error: BaseException | None = None  # what a slice raised; the loader raises it in order
        self.skipped = 0


async def _send_batches(records: _Records, settings: LoaderSettings, send_channel: trio.MemorySendChannel,
                        begin_epoch: int, num_epochs: int) -> None:
    """Builds batches ahead (at most `prefetch` at a time) and sends them, and each EpochEnd, in order."""
    builder = _Builder(records, settings)
    shard, skipped_in_shard = records.shard(settings.num_parts, settings.part_index)

    def order_of(epoch: int) -> np.ndarray:
        return _epoch_order(shard, settings.seed, epoch, settings.shuffle)

    pending: deque[_Job | int] = deque()  # jobs in order, and after each epoch's last job its number
    building = 0
    tally = {"batches": 0, "samples": 0, "skipped": 0}

    async def send_oldest() -> None:
        nonlocal building
        job = pending.popleft()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        building -= 1
        await send_channel.send(job.batch)
        tally["batches"] += 1
        tally["samples"] += settings.batch_size - job.batch.pad
        tally["skipped"] += job.skipped
        job.batch = None  # the consumer owns it now
        while pending and isinstance(pending[0], int):
            epoch = pending.popleft()
            await send_channel.send(EpochEnd(epoch, tally["batches"], tally["samples"],
                                             tally["skipped"] + skipped_in_shard))
            tally.update(batches=0, samples=0, skipped=0)

    async with trio.open_nursery() as nursery:
        workers = _Workers(builder, settings.nthreads)
        workers.start(nursery)
        try:
            for epoch in range(begin_epoch, begin_epoch + num_epochs):
                plan = _plan_epoch(order_of, len(shard), settings.batch_size, settings.last_batch, epoch)
                if settings.epoch_batches:
                    plan = _resized(plan, settings.epoch_batches, settings, epoch)
                if not plan:  # nothing to build: the EpochEnd goes out once everything before it has
                    while pending:
                        await send_oldest()
                    await send_channel.send(EpochEnd(epoch, 0, 0, skipped_in_shard))
                    continue
                for index, (positions, pad) in enumerate(plan):
                    while building >= settings.prefetch:
                        await send_oldest()
                    job = _Job(epoch, index, positions, pad)
                    pending.append(job)
                    building += 1
                    workers.submit(builder.prepare(job))
                pending.append(epoch)
            while pending:
                await send_oldest()
        finally:
            workers.stop()  # synchronous: runs when cancelled too; the threads end after their current slice


class _Workers:
    """`nthreads` threads for the loader's lifetime, filling batch slices taken from one queue.

    A Trio thread call for every slice cost the Trio thread ~560 us of CPU a batch (15% of a core
    on 2 cores, taken from the decoding threads); these threads take slices from a queue and wake
    Trio once a batch, when its last slice is done.
    """

    def __init__(self, builder: _Builder, nthreads: int):
        self.builder = builder
        self.nthreads = nthreads
        self.slices: queue.SimpleQueue[tuple[_Job, int] | None] = queue.SimpleQueue()

    def start(self, nursery: trio.Nursery) -> None:
        token = trio.lowlevel.current_trio_token()
        limiter = trio.CapacityLimiter(self.nthreads)  # not Trio's default one: these threads hold it for the run
        for _ in range(self.nthreads):
            nursery.start_soon(partial(trio.to_thread.run_sync, self.work, token, limiter=limiter))

    def submit(self, job: _Job) -> None:
        for start in self.builder.slice_starts:
            self.slices.put((job, start))

    def stop(self) -> None:
        for _ in range(self.nthreads):
            self.slices.put(None)

    def work(self, token: trio.lowlevel.TrioToken) -> None:
        """A worker thread's life: fill slices until told to stop."""
        staging = self.builder.staging()
        while (item := self.slices.get()) is not None:
            job, start = item
            if self.builder.fill(job, start, staging):
                token.run_sync_soon(job.done.set)


class _Builder:
    """Fills batches, a slice of `batch_size / nthreads` samples at a time, in worker threads."""

    def __init__(self, records: _Records, settings: LoaderSettings):
        self.records = records
        self.settings = settings
        slice_size = math.ceil(settings.batch_size / settings.nthreads)
        self.slice_starts = range(0, settings.batch_size, slice_size)
        self.slice_size = slice_size
        self.mean = np.asarray(settings.mean, dtype=np.float32)
        self.inv_std = 1 / np.asarray(settings.std, dtype=np.float32)
        self.float_output = settings.layout == "float32_nchw"
        _, height, width = settings.data_shape
        self.image_shape = (height, width, 3)
        self.chunk = max(1, _CHUNK_BYTES // (height * width * 3))
        self.lock = threading.Lock()  # slices of one batch finish in different threads
        if self.float_output:
            batch_shape, dtype = (settings.batch_size, 3, height, width), np.float32
        else:
            batch_shape, dtype = (settings.batch_size, height, width, 3), np.uint8
        self.arrays = _BatchArrays(batch_shape, dtype, keep=settings.prefetch + 4)

    def prepare(self, job: _Job) -> _Job:
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

    def fill(self, job: _Job, start: int, staging: np.ndarray | None) -> bool:
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

    def complete(self, job: _Job) -> None:
        out, labels = job.out, self.records.labels[job.positions]  # fancy indexing: a fresh label array
        pad = job.pad
        if job.bad:
            real = len(out) - job.pad
            job.skipped = sum(1 for index in job.bad if index < real)
            pad = _move_bad_to_end(out, labels, job.bad, real)
        job.batch = Batch(job.epoch, job.index, torch.from_numpy(out), torch.from_numpy(labels), pad)
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
            augment.finish(images, chunk_params, options, normalized, self.mean, self.inv_std)
        return bad

    def decode_into(self, images: np.ndarray, positions: np.ndarray, params: AugmentParams | None,
                    first: int) -> list[int]:
        """Decodes the records at `positions` into `images` (output-sized uint8 HWC slots), through the
        geometric augmentation when the image needs it. Returns the batch indices of bad records."""
        records, options = self.records, self.settings.augment
        memory, joined = records.memory, records.joined
        direct = not options.reshapes  # an image that already has the output size is used as decoded
        bad = []
        places = zip(positions.tolist(), records.image_start[positions].tolist(), records.image_end[positions].tolist())
        for index, (position, begin, end) in enumerate(places):
            encoded = memory[begin:end] if begin >= 0 else joined[position]
            slot = images[index]
            try:
                if direct:
                    try:
                        if decode(encoded, out=slot).shape == slot.shape:
                            continue
                    except (ImageError, ValueError):
                        pass  # larger than the slot (or corrupt: the decode below says so)
                augment.place(decode(encoded), params, index, options, slot)
            except ImageError as error:
                if not self.settings.skip_bad_records:
                    raise records.error(position, error.message) from None
                bad.append(first + index)
        return bad


class _BatchArrays:
    """Batch arrays to fill, each reused once nothing outside this pool refers to it any more.

    A fresh array a batch cost the Trio thread ~150 us a batch to free (glibc gives a freed batch's
    pages back to the OS) and the workers as much again to fault them back in, zeroed. A batch
    handed out stays the consumer's for as long as anything refers to it: its tensor, a view or
    a numpy array of it all hold a reference to the array, and CPython counts them exactly.
    """

    def __init__(self, shape: tuple[int, ...], dtype: type, keep: int):
        self.shape, self.dtype, self.keep = shape, dtype, keep
        # First a probe that only this list refers to: what its count reads as means "unused" on
        # this interpreter (the loop variable and getrefcount's argument count too).
        self.arrays: list[np.ndarray] = [np.empty(0, dtype=dtype)]

    def take(self) -> np.ndarray:
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


def _move_bad_to_end(out: np.ndarray, labels: np.ndarray, bad: list[int], real: int) -> int:
    """Reorders a batch so that its good real samples come first; the rest is filler. Returns the new pad."""
    bad_set = set(bad)
    good_real = [index for index in range(real) if index not in bad_set]
    good_filler = [index for index in range(real, len(out)) if index not in bad_set]
    keep = good_real + good_filler
    if not keep:
        out[...] = 0
        labels[...] = 0
        return len(out)
    order = keep + [keep[index % len(keep)] for index in range(len(out) - len(keep))]
    out[...] = out[order]
    labels[...] = labels[order]
    return len(out) - len(good_real)


# --------------------------------------------------------------------------- benchmark = true


async def _send_synthetic(settings: LoaderSettings, send_channel: trio.MemorySendChannel,
                          begin_epoch: int, num_epochs: int) -> None:
    """data.py's SyntheticDataIter: the same random batch over and over (a fresh copy each time)."""
    data, labels = await trio.to_thread.run_sync(_synthetic_batch, settings)
    size = settings.batch_size
    batches = settings.epoch_batches or (math.ceil(settings.num_examples / size) if settings.num_examples
                                         else SYNTHETIC_BATCHES)
    for epoch in range(begin_epoch, begin_epoch + num_epochs):
        for index in range(batches):
            copy = await trio.to_thread.run_sync(data.copy)
            await send_channel.send(Batch(epoch, index, torch.from_numpy(copy), torch.from_numpy(labels.copy()), 0))
        await send_channel.send(EpochEnd(epoch, batches, batches * size))


def _synthetic_batch(settings: LoaderSettings) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(derive_seed(settings.seed, "synthetic"))
    size = settings.batch_size
    _, height, width = settings.data_shape
    if settings.layout == "float32_nchw":
        data = rng.uniform(-1, 1, (size, 3, height, width)).astype(np.float32)
    else:
        data = rng.integers(0, 256, (size, height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, settings.num_classes, size).astype(np.float32)
    return data, labels
