"""The TensorBoard logger (`log.tensorboard_dir`): the run's figures as scalars, for `tensorboard --logdir`.

    train/<metric>, validation/<metric>, lr, epoch_seconds, samples_per_second   at step = epoch
    batch/<metric>, batch/samples_per_second   Speedometer's, at step = the batch's count in the run

Written with torch.utils.tensorboard's SummaryWriter (the optional `tensorboard` extra: `pip install
'flow-fit[tensorboard]'`), flushed at each epoch's end and validation. The batch scalars need the
epoch's length in batches, which custom data without data.num_examples does not tell: then only the
epoch scalars are written.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterable

import trio

from flow.errors import FlowError
from flow.events import BatchEnd, EpochEnd, RunStarted, Validation


def scalars(event, batches_per_epoch: int) -> list[tuple[str, float, int]]:
    """(tag, value, step) of each scalar `event` holds."""
    if isinstance(event, EpochEnd):
        speed = event.samples / event.seconds if event.seconds > 0 else 0.0
        return [*((f"train/{name}", value, event.epoch) for name, value in event.metrics),
                ("lr", event.lr, event.epoch), ("epoch_seconds", event.seconds, event.epoch),
                ("samples_per_second", speed, event.epoch)]
    if isinstance(event, Validation):
        return [(f"validation/{name}", value, event.epoch) for name, value in event.metrics]
    if isinstance(event, BatchEnd) and batches_per_epoch:
        step = event.epoch * batches_per_epoch + event.batch
        return [*((f"batch/{name}", value, step) for name, value in event.metrics),
                ("batch/samples_per_second", event.samples_per_second, step)]
    return []


async def log_tensorboard(events: AsyncIterable, log_dir: str) -> None:
    """Writes each event's scalars to an event file in `log_dir` until the stream ends; a write that
    fails (a full disk) is a FlowError naming the folder."""
    writer = await trio.to_thread.run_sync(_open_writer, log_dir)
    try:
        batches_per_epoch = 0
        async for event in events:
            if isinstance(event, RunStarted):
                batches_per_epoch = event.batches_per_epoch
            figures = scalars(event, batches_per_epoch)
            for tag, value, step in figures:
                _call(writer.add_scalar, log_dir, tag, value, step)
            if figures and not isinstance(event, BatchEnd):
                await trio.to_thread.run_sync(_call, writer.flush, log_dir)
    except BaseException:
        with contextlib.suppress(OSError):  # the error that ends the run is the one already raised
            writer.close()
        raise
    await trio.to_thread.run_sync(_call, writer.close, log_dir)


def _open_writer(log_dir: str):
    from torch.utils.tensorboard import SummaryWriter  # the optional extra; the config checked it is there

    return _call(SummaryWriter, log_dir, log_dir)


def _call(function, log_dir: str, *args):
    """`function(*args)`, an OSError (its writer thread's, raised at the next call) as a FlowError."""
    try:
        return function(*args)
    except OSError as error:
        raise FlowError(f"cannot write TensorBoard events: {error.strerror or error}", log_dir) from None
