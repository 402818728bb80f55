"""The loader actor: a `.rec` file in, shuffled, sharded, decoded and augmented batches out.

It takes the file's record table (flow/recordio.py), read once before the run starts. Per epoch
the shard's records are put in that epoch's order and cut into batches (flow/epochs.py); each
batch is filled, a slice at a time, by worker threads that live as long as the loader
(flow/decode_workers.py), which decode the records straight into the batch's reused array and
augment and normalize them there (flow/batch_builder.py).

Batches leave in order on the channel. At most `prefetch` batches are being built or waiting
to be sent, so memory stays flat however slow the consumer; give the loader an unbuffered
channel for exactly that bound (a buffered one adds its buffer).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import trio

from flow.augment import AugmentSettings
from flow.batch_builder import BatchBuilder, BatchJob
from flow.decode_workers import DecodeWorkers
from flow.epochs import EpochBatches, batches_of_epoch, epoch_order, resized, shard
from flow.errors import ConfigError, unwrapped_errors
from flow.image import DEFAULT_MAX_PIXELS
from flow.image_records import ImageRecords
from flow.recordio import RecordTable, read_record_table
from flow.seeding import derive_seed

LAST_BATCH_MODES = ("pad", "discard", "roll_over")
LAYOUTS = ("float32_nchw", "uint8_nhwc")
SYNTHETIC_BATCHES = 500  # data.py's SyntheticDataIter: 500 batches an epoch when num_examples is unknown


@dataclass(frozen=True)
class Batch:
    epoch: int
    index: int  # batch number within the epoch
    data: torch.Tensor  # float32 NCHW normalized, or uint8 NHWC; the consumer's until it drops every reference
    label: torch.Tensor  # float32, (batch,) or (batch, label_width)
    pad: int  # the last `pad` samples are filler, not part of the epoch (MXNet's DataBatch.pad)
    ids: np.ndarray | None = None  # uint64: each sample's record IRHeader id (None: synthetic batches)
    mirror: torch.Tensor | None = None  # bool per sample, uint8 layout: flip left-right on the device (None: done or none)


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
    layout: str = "float32_nchw"  # uint8_nhwc: the device normalizes, and mirrors by Batch.mirror
    pin_memory: bool = False  # batch arrays in page-locked memory, which a GPU copies from asynchronously
    label_width: int = 1  # 1: as many labels as the records carry
    skip_bad_records: bool = False
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    augment: AugmentSettings = AugmentSettings()
    seed: int = 0
    benchmark: bool = False  # synthetic random batches, no IO
    num_classes: int = 1000  # with label_width 1, labels are class ids below it (and benchmark labels are drawn so)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # an image whose header claims more is a bad record, never decoded
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


def record_table(settings: LoaderSettings) -> RecordTable | None:
    """The record table the loader of `settings` takes: the plan reads it once, before any actor
    starts (a bad file fails there). None in benchmark mode, which reads no records."""
    if settings.benchmark:
        return None
    return read_record_table(settings.path, settings.index_path or None)


async def loader(settings: LoaderSettings, table: RecordTable | None, send_channel: trio.MemorySendChannel,
                 begin_epoch: int = 0, num_epochs: int = 1, begin_batch: int = 0) -> None:
    """Sends each epoch's Batches, then its EpochEnd, for `num_epochs` epochs from `begin_epoch`,
    from the records of `table` (`record_table(settings)`); of the first epoch, the batches from
    `begin_batch` on (a run stopped mid-epoch resumes there: the earlier ones are never read)."""
    with send_channel:  # sync close: an async one could let Cancelled hide our error
        with unwrapped_errors():
            if settings.benchmark:
                await _send_synthetic(settings, send_channel, begin_epoch, num_epochs, begin_batch)
                return
            records = await trio.to_thread.run_sync(ImageRecords, table, settings.label_width,
                                                    settings.skip_bad_records, settings.num_classes)
            try:
                await _send_batches(records, settings, send_channel, begin_epoch, num_epochs, begin_batch)
            finally:
                records.close()


async def _send_batches(records: ImageRecords, settings: LoaderSettings, send_channel: trio.MemorySendChannel,
                        begin_epoch: int, num_epochs: int, begin_batch: int) -> None:
    """Builds batches ahead (at most `prefetch` at a time) and sends them, and each EpochEnd, in order."""
    builder = BatchBuilder(records, settings)
    positions, skipped_in_shard = shard(records.bad, settings.num_parts, settings.part_index)
    pending: deque[BatchJob | int] = deque()  # jobs in order, and after each epoch's last job its number
    building = 0
    tally = {"batches": 0, "samples": 0, "skipped": 0}

    async def send_oldest() -> None:
        nonlocal building
        job = pending.popleft()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        building -= 1
        batch = Batch(job.epoch, job.index, job.data, job.label, job.pad, job.ids, job.mirror)
        # the consumer's now (a worker thread may still hold the job)
        job.data = job.label = job.ids = job.mirror = None
        await send_channel.send(batch)
        tally["batches"] += 1
        tally["samples"] += settings.batch_size - batch.pad
        tally["skipped"] += job.skipped
        while pending and isinstance(pending[0], int):
            epoch = pending.popleft()
            await send_channel.send(EpochEnd(epoch, tally["batches"], tally["samples"],
                                             tally["skipped"] + skipped_in_shard))
            tally.update(batches=0, samples=0, skipped=0)

    async with trio.open_nursery() as nursery:
        workers = DecodeWorkers(builder, settings.nthreads)
        workers.start(nursery)
        try:
            for epoch in range(begin_epoch, begin_epoch + num_epochs):
                # A batch's records and augmentation depend only on (seed, epoch, index): skipping
                # the first ones leaves the rest as they would have been.
                skip = begin_batch if epoch == begin_epoch else 0
                batches = list(enumerate(_batches_of_epoch(positions, settings, epoch)))[skip:]
                if not batches:  # nothing to build: the EpochEnd goes out once everything before it has
                    while pending:
                        await send_oldest()
                    await send_channel.send(EpochEnd(epoch, 0, 0, skipped_in_shard))
                    continue
                for index, (batch_positions, pad) in batches:
                    while building >= settings.prefetch:
                        await send_oldest()
                    job = BatchJob(epoch, index, batch_positions, pad)
                    pending.append(job)
                    building += 1
                    workers.submit(builder.prepare(job))
                pending.append(epoch)
            while pending:
                await send_oldest()
        finally:
            workers.stop()  # synchronous: runs when cancelled too; the threads end after their current slice


def _batches_of_epoch(positions: np.ndarray, settings: LoaderSettings, epoch: int) -> EpochBatches:
    """The batches of `epoch` over the shard's `positions`, as `last_batch` and `epoch_batches` say."""
    order_of = partial(epoch_order, positions, settings.seed, shuffle=settings.shuffle)
    batches = batches_of_epoch(order_of, len(positions), settings.batch_size, settings.last_batch, epoch)
    if not settings.epoch_batches:
        return batches
    if not batches:  # every process of a dist job must run every update: it cannot sit one out
        raise ConfigError(f"data.batch_size: shard {settings.part_index} of {settings.num_parts} has no batch "
                          f"in epoch {epoch} (last_batch = {settings.last_batch!r}), but every process must "
                          f"run {settings.epoch_batches} an epoch", settings.path)
    return resized(batches, settings.epoch_batches)


# --------------------------------------------------------------------------- benchmark = true


async def _send_synthetic(settings: LoaderSettings, send_channel: trio.MemorySendChannel,
                          begin_epoch: int, num_epochs: int, begin_batch: int) -> None:
    """data.py's SyntheticDataIter: the same random batch over and over (a fresh copy each time)."""
    data, labels = await trio.to_thread.run_sync(_synthetic_batch, settings)
    size = settings.batch_size
    batches = settings.epoch_batches or (math.ceil(settings.num_examples / size) if settings.num_examples
                                         else SYNTHETIC_BATCHES)
    for epoch in range(begin_epoch, begin_epoch + num_epochs):
        for index in range(begin_batch if epoch == begin_epoch else 0, batches):
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
