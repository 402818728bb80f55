"""The fit loop: the coordinator that reads like MXNet's Module.fit.

For each epoch: take the loader's batches, hand each device its slice (forward_backward), have the
parameter server apply the update, pass outputs to the metric actor, then ask for a checkpoint
and run validation. It holds no tensors of its own beyond the batch in hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import trio

from actors.compute import Work
from actors.checkpoint import Save
from actors.loader import EpochEnd as LoaderEpochEnd
from actors.metrics import Outputs, SplitEnd
from actors.param_server import StateRequest, Update
from flow.errors import FlowError
from flow.events import RunFinished, RunStarted


@dataclass(frozen=True)
class FitSettings:
    begin_epoch: int
    num_epochs: int
    devices: tuple[str, ...]
    kv_store: str
    checkpoint_period: int  # 0: no checkpoints
    seed: int
    begin_update: int  # updates already done (resume)
    num_parameters: int
    schedule: object  # flow.lr_schedule schedule: a pure function of the update count
    model_spec: dict | None


@dataclass(frozen=True)
class FitChannels:
    train_batches: trio.MemoryReceiveChannel
    val_batches: trio.MemoryReceiveChannel | None
    work: list  # one MemorySendChannel of Work per device
    results: trio.MemoryReceiveChannel  # SliceResult from every device
    server_requests: trio.MemorySendChannel | None  # None: one device updates itself (no kvstore)
    server_replies: trio.MemoryReceiveChannel | None
    outputs: trio.MemorySendChannel  # to the metric actor
    saves: trio.MemorySendChannel | None  # to the checkpoint actor
    events: trio.MemorySendChannel


def slice_bounds(batch_size: int, num_devices: int) -> list[tuple[int, int]]:
    """Near-equal contiguous slices, one per device (the first ones one larger when uneven)."""
    sizes = [batch_size // num_devices + (replica < batch_size % num_devices) for replica in range(num_devices)]
    edges = np.cumsum([0, *sizes]).tolist()
    return list(zip(edges[:-1], edges[1:]))


async def fit(settings: FitSettings, channels: FitChannels) -> RunFinished:
    """Runs the epochs and returns the run's summary (sent once every other actor is done, so it is the
    last event). Closes every channel it sends on, however it ends, so the actors downstream finish."""
    send_channels = [*channels.work, channels.outputs, channels.events]
    send_channels += [c for c in (channels.server_requests, channels.saves) if c is not None]
    try:
        return await _fit(settings, channels)
    finally:
        for channel in send_channels:
            channel.close()


class _Loop:
    """The loop's state: the newest master weights each replica has not loaded yet, and the update count."""

    def __init__(self, settings: FitSettings, channels: FitChannels):
        self.settings = settings
        self.channels = channels
        self.num_devices = len(settings.devices)
        self.unloaded_weights: list = [None] * self.num_devices
        self.num_update = settings.begin_update

    async def run_slices(self, kind: str, epoch: int, index: int, batch, scale: float = 1.0,
                         weight: torch.Tensor | None = None) -> list:
        bounds = slice_bounds(batch.data.shape[0], self.num_devices)
        used = [replica for replica, (start, stop) in enumerate(bounds) if stop > start]
        for replica in used:
            start, stop = bounds[replica]
            await self.channels.work[replica].send(Work(
                kind, epoch, index, batch.data[start:stop], batch.label[start:stop],
                None if weight is None else weight[start:stop], scale, self.unloaded_weights[replica]))
            self.unloaded_weights[replica] = None
        results = [await self.channels.results.receive() for _ in used]
        return sorted(results, key=lambda result: result.replica)

    async def train_step(self, epoch: int, index: int, batch) -> None:
        size = batch.data.shape[0]
        real = size - batch.pad
        weight = torch.ones(size)
        weight[real:] = 0
        results = await self.run_slices("train", epoch, index, batch, 1.0 / real, weight)
        if self.channels.server_requests is not None:
            await self.channels.server_requests.send(Update(epoch, index, [r.gradients for r in results], 1.0 / real))
            updated = await self.channels.server_replies.receive()
            self.unloaded_weights = [updated.weights] * self.num_devices
        self.num_update += 1
        outputs = results[0].outputs if len(results) == 1 else torch.cat([r.outputs for r in results])
        await self.channels.outputs.send(Outputs("train", epoch, index, outputs, batch.label, real,
                                                 time.perf_counter(), self.settings.schedule.lr_at(self.num_update)))

    async def train_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        index = samples = 0
        while not isinstance(batch := await self._next(self.channels.train_batches, "training"), LoaderEpochEnd):
            await self.train_step(epoch, index, batch)
            index += 1
            samples += batch.data.shape[0] - batch.pad
        await self.channels.outputs.send(SplitEnd("train", epoch, index, samples, time.perf_counter() - start))

    async def validate(self, epoch: int) -> None:
        index = samples = 0
        while not isinstance(batch := await self._next(self.channels.val_batches, "validation"), LoaderEpochEnd):
            results = await self.run_slices("eval", epoch, index, batch)
            outputs = results[0].outputs if len(results) == 1 else torch.cat([r.outputs for r in results])
            real = batch.data.shape[0] - batch.pad
            await self.channels.outputs.send(Outputs("val", epoch, index, outputs, batch.label, real, time.perf_counter()))
            index += 1
            samples += real
        await self.channels.outputs.send(SplitEnd("val", epoch, index, samples, 0.0))

    async def save(self, epoch: int) -> None:
        await self.channels.work[0].send(Work("snapshot", epoch, -1, weights=self.unloaded_weights[0]))
        self.unloaded_weights[0] = None
        snapshot = (await self.channels.results.receive()).state
        updater_state = snapshot.get("updater")
        if self.channels.server_requests is not None:
            await self.channels.server_requests.send(StateRequest())
            updater_state = (await self.channels.server_replies.receive()).updater_state
        states = {"epoch": epoch + 1, "num_update": self.num_update, "seed": self.settings.seed,
                  "updater": updater_state}
        await self.channels.saves.send(Save(epoch + 1, snapshot["model"], states, self.settings.model_spec))

    @staticmethod
    async def _next(channel: trio.MemoryReceiveChannel, what: str):
        try:
            return await channel.receive()
        except trio.EndOfChannel:
            raise FlowError(f"the {what} data ended before the epoch did") from None


async def _fit(settings: FitSettings, channels: FitChannels) -> RunFinished:
    loop = _Loop(settings, channels)
    start = time.perf_counter()
    await channels.events.send(RunStarted(settings.begin_epoch, settings.num_epochs, list(settings.devices),
                                          settings.kv_store, settings.num_parameters))
    for epoch in range(settings.begin_epoch, settings.num_epochs):
        await loop.train_epoch(epoch)
        if channels.saves is not None and (epoch + 1) % settings.checkpoint_period == 0:
            await loop.save(epoch)
        if channels.val_batches is not None:
            await loop.validate(epoch)
    return RunFinished(settings.num_epochs - settings.begin_epoch, loop.num_update, time.perf_counter() - start)
