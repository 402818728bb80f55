"""The metric actor: adds up each step's metric statistics, and sends the figures as events.

The compute actors compute each slice's statistics beside its outputs (a few numbers instead of a
batch of probabilities), read back once a Speedometer window (flow/fit.py marks the steps that
report); this actor keeps the sums. It runs beside training (the fit loop hands
it batch n's statistics and goes on to batch n+1), and
reports as MXNet's Speedometer with auto_reset and fit's epoch end: every `disp_batches` batches
a BatchEnd with the window's speed and local metrics, then each epoch's EpochEnd (global metrics,
time cost) and Validation. The console (flow.console) turns these into MXNet's log lines.
With a `validation_channel`, each Validation goes there too: the fit loop's best checkpoint and
early stopping wait for it. The fit loop's events that belong between these lines (a learning rate
change, the monitor's figures) come through this actor too, and go on in the order they came, as
MXNet prints them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio

from flow import channels as hand_off
from flow.events import BatchEnd, EpochEnd, LearningRateChanged, MonitorStatistics, Validation
from flow.metrics import create_metric


@dataclass(frozen=True)
class MetricSettings:
    metrics: tuple[str, ...]
    top_k: int
    batch_size: int
    disp_batches: int


@dataclass(frozen=True)
class StepStatistics:
    """One step's end, and the metric statistics the devices reported with it: for each step since the
    previous report (none, on a step that did not report), one entry per device slice with real
    samples, each what `create_metric(...).statistics(label, probabilities)` gave for that slice;
    step by step, device by device within a step (MXNet's update_metric order). The fit loop marks
    every step that ends a window as a report, so a BatchEnd's figures hold all of its steps."""

    split: str  # "train" or "val"
    epoch: int
    index: int
    statistics: tuple
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
                  event_channel: trio.MemorySendChannel,
                  validation_channel: trio.MemorySendChannel | None = None) -> None:
    # sync close: an async one could let Cancelled hide our error
    with output_channel, event_channel, validation_channel or contextlib.nullcontext():
        train_metric = create_metric(settings.metrics, settings.top_k)
        val_metric = create_metric(settings.metrics, settings.top_k)
        window_start, window_first, window_epoch = 0.0, 0, None
        lr = 0.0  # the last training step's
        while True:
            try:
                message = await hand_off.receive(output_channel)
            except trio.EndOfChannel:
                break
            if isinstance(message, (LearningRateChanged, MonitorStatistics)):
                await event_channel.send(message)
            elif isinstance(message, StepStatistics):
                metric = train_metric if message.split == "train" else val_metric
                for slice_statistics in message.statistics:  # in device order, as MXNet's update_metric
                    metric.add(slice_statistics)
                if message.split != "train":
                    continue
                lr = message.lr
                # Speedometer: the first batch of an epoch (batch 0, or where a stopped run resumed)
                # starts the clock; every disp_batches batches after 0, report the window's speed
                # and local metrics, then reset them.
                if message.epoch != window_epoch:
                    window_start, window_first, window_epoch = message.time, message.index, message.epoch
                elif message.index % settings.disp_batches == 0:
                    batches = message.index - window_first
                    speed = batches * settings.batch_size / max(message.time - window_start, 1e-9)
                    name_values = metric.get()
                    metric.reset_local()
                    await event_channel.send(BatchEnd(message.epoch, message.index, speed, name_values, message.lr,
                                                      window_first))
                    window_start, window_first = message.time, message.index
            elif message.split == "train":
                name_values = train_metric.get_global()
                train_metric.reset()
                await event_channel.send(EpochEnd(message.epoch, name_values, message.seconds, message.samples,
                                                  message.batches, lr))
            else:
                name_values = val_metric.get_global()
                val_metric.reset()
                validation = Validation(message.epoch, name_values, message.samples)
                await event_channel.send(validation)
                if validation_channel is not None:
                    await validation_channel.send(validation)
