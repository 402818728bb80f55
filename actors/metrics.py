"""The metric actor: digests each step's outputs and labels, prints MXNet's log lines, sends events.

It runs beside training (the fit loop hands it batch n's outputs and goes on to batch n+1), and
speaks like MXNet's Speedometer with auto_reset and fit's epoch end:

    Epoch[0] Batch [0-20]	Speed: 1234.56 samples/sec	accuracy=0.500000
    Epoch[0] Train-accuracy=0.612000
    Epoch[0] Time cost=12.345
    Epoch[0] Validation-accuracy=0.700000
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import trio
from tqdm import tqdm

from flow.events import BatchEnd, EpochEnd, Validation
from flow.metrics import create_metric, speedometer_line, time_cost_line, train_line, validation_line

log = logging.getLogger("flow")


@dataclass(frozen=True)
class MetricSettings:
    metrics: tuple[str, ...]
    top_k: int
    batch_size: int
    disp_batches: int
    batches_per_epoch: int  # for the progress bar; 0 when unknown
    progress: bool | None = None  # None: a bar only when stderr is a terminal


@dataclass(frozen=True)
class Outputs:
    """One step's outputs (probabilities) and labels; only the first `samples` rows are real."""

    split: str  # "train" or "val"
    epoch: int
    index: int
    outputs: torch.Tensor
    label: torch.Tensor
    samples: int
    time: float  # time.perf_counter() when the step finished: Speedometer's clock
    lr: float = 0.0


@dataclass(frozen=True)
class SplitEnd:
    split: str
    epoch: int
    batches: int
    samples: int
    seconds: float  # the epoch's time cost (training); 0 for validation


async def metrics(settings: MetricSettings, output_channel: trio.MemoryReceiveChannel,
                  event_channel: trio.MemorySendChannel) -> None:
    train_metric = create_metric(settings.metrics, settings.top_k)
    val_metric = create_metric(settings.metrics, settings.top_k)
    window_start = 0.0
    bar = None
    with output_channel, event_channel, _closing(lambda: bar):  # sync close: an async one could let Cancelled hide our error
        async for message in output_channel:
            if isinstance(message, Outputs):
                metric = train_metric if message.split == "train" else val_metric
                metric.update(message.label[: message.samples], message.outputs[: message.samples])
                if message.split != "train":
                    continue
                if bar is None and settings.batches_per_epoch and _show_progress(settings.progress):
                    bar = tqdm(total=settings.batches_per_epoch, desc=f"epoch {message.epoch}", leave=False,
                               unit="batch", file=sys.stderr)
                if bar is not None:
                    bar.update(1)
                # Speedometer: the first batch of an epoch starts the clock; every disp_batches
                # batches after it, report the window's speed and local metrics, then reset them.
                if message.index == 0:
                    window_start = message.time
                elif message.index % settings.disp_batches == 0:
                    speed = settings.disp_batches * settings.batch_size / max(message.time - window_start, 1e-9)
                    name_values = metric.get()
                    metric.reset_local()
                    window_start = message.time
                    _write(bar, speedometer_line(message.epoch, message.index - settings.disp_batches,
                                                 message.index, speed, name_values))
                    await event_channel.send(BatchEnd(message.epoch, message.index, speed, name_values, message.lr))
            elif message.split == "train":
                name_values = train_metric.get_global()
                if bar is not None:
                    bar.close()
                    bar = None
                for name, value in name_values:
                    _write(None, train_line(message.epoch, name, value))
                _write(None, time_cost_line(message.epoch, message.seconds))
                train_metric.reset()
                await event_channel.send(EpochEnd(message.epoch, name_values, message.seconds, message.samples,
                                                  message.batches))
            else:
                name_values = val_metric.get_global()
                for name, value in name_values:
                    _write(None, validation_line(message.epoch, name, value))
                val_metric.reset()
                await event_channel.send(Validation(message.epoch, name_values, message.samples))


@contextmanager
def _closing(current_bar: Callable[[], tqdm | None]) -> Iterator[None]:
    """Closes the bar still open when the block ends, cancelled too: else an interrupted run's bar
    stays on the terminal with the next line ("flow run: interrupted") written after it."""
    try:
        yield
    finally:
        if (bar := current_bar()) is not None:
            bar.close()


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _write(bar, line: str) -> None:
    if bar is not None:
        bar.clear()
    log.info(line)
    if bar is not None:
        bar.refresh()
