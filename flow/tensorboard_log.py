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
import itertools
import os
import socket
import time
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
    event_file = await trio.to_thread.run_sync(_call, EventFile, log_dir, log_dir)
    try:
        batches_per_epoch = 0
        async for event in events:
            if isinstance(event, RunStarted):
                batches_per_epoch = event.batches_per_epoch
            if figures := scalars(event, batches_per_epoch):
                await trio.to_thread.run_sync(_call, event_file.write, log_dir, figures, not isinstance(event, BatchEnd))
    except BaseException:
        with contextlib.suppress(OSError):  # the error that ends the run is the one already raised
            event_file.file.close()
        raise
    await trio.to_thread.run_sync(_call, event_file.file.close, log_dir)


class EventFile:
    """A TensorBoard event file (TFRecords of Event protos), written with tensorboard's own RecordWriter on
    the calling thread: torch's SummaryWriter writes on a thread of its own, which reports a failed write
    only at the next call, and as a stray traceback on stderr."""

    def __init__(self, log_dir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2  # the optional extra; the config checked it
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
        os.makedirs(log_dir, exist_ok=True)
        # TensorBoard finds files by this name; pid and a count tell apart runs started in the same second
        name = "events.out.tfevents.%010d.%s.%d.%d" % (time.time(), socket.gethostname(), os.getpid(),
                                                        next(_FILE_COUNT))
        self.file = open(os.path.join(log_dir, name), "wb")
        self.records = RecordWriter(self.file)
        self.records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def write(self, figures: list[tuple[str, float, int]], flush: bool) -> None:
        """Appends one event per scalar; `flush`: to the OS now."""
        Value = self.summary_pb2.Summary.Value
        for tag, value, step in figures:
            summary = self.summary_pb2.Summary(value=[Value(tag=tag, simple_value=value)])
            self.records.write(self.event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
                               .SerializeToString())
        if flush:
            self.file.flush()


_FILE_COUNT = itertools.count()


def _call(function, log_dir: str, *args):
    """`function(*args)`, an OSError as a FlowError naming the folder."""
    try:
        return function(*args)
    except OSError as error:
        raise FlowError(f"cannot write TensorBoard events: {error.strerror or error}", log_dir) from None
