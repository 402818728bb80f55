"""The fit loop: the coordinator that reads like MXNet's Module.fit.

For each epoch: take the loader's batches, hand each device its slice (forward_backward), have the
parameter server apply the update, pass outputs to the metric actor, then ask for a checkpoint
and run validation. It holds no tensors of its own beyond the batches in hand.

The devices read their outputs back (a GPU's one synchronization) only on the steps the loop marks
`report`: those that end a Speedometer window (every `disp_batches` batches, validation's too), an
epoch, or the run (a stop), and the one before a batch too small to give every device a slice. So
the loop looks one batch ahead: a batch is sent once the next one (or the epoch's end) is in hand.

A stop request (`FitChannels.stop`: SIGINT or SIGTERM in `flow run`, `run.stop()` in a program) is
looked at as each batch comes: the batch held back (the look-ahead) is sent as the last step and
the steps sent finish (none, at an epoch's start), the model, the updater, the update
count, each replica's random state and the position in the epoch (batches done) are saved as a
mid-epoch checkpoint (or, at an epoch's start, as that epoch's), and the loop ends with RunStopped.
A run resumed from it (`begin_batch`) takes the rest of the epoch's batches, in the same order
with the same augmentation and random draws, so it ends with the weights of a run never stopped,
bit for bit on the CPU. The resumed epoch's Train- metrics and time cost cover only its batches
after the stop: a metric's sums are not part of a checkpoint.

With a watch (flow.metric_watch: the best checkpoint, early stopping) it also waits for each
epoch's validation figures from the metric actor, and decides from them whether to save the best
checkpoint and whether to stop. Its validation then runs whole even when a stop is requested
meanwhile (the stop comes before the next step): the watches must see every epoch's figures, and a
checkpoint holds their states after them, so that a resumed run decides as one never stopped.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass

import torch
import trio

from flow.actors.compute import EvalSlice, SnapshotRequest, TrainSlice
from flow.actors.checkpoint import Save
from flow.actors.loader import EpochEnd as LoaderEpochEnd
from flow.actors.metrics import SplitEnd, StepStatistics
from flow.actors.param_server import StateRequest, Update
from flow import channels as hand_off
from flow.errors import FlowError
from flow.events import (EarlyStopped, LearningRateChanged, NonFiniteUpdatesSkipped, RunFinished, RunStarted,
                         RunStopped)
from flow.metric_watch import MetricWatch, WatchSettings


@dataclass(frozen=True)
class FitSettings:
    begin_epoch: int
    num_epochs: int
    devices: tuple[str, ...]
    kv_store: str
    checkpoint_period: int  # save after every this many epochs (when there is a checkpoint actor)
    seed: int
    begin_update: int  # updates already done (resume)
    num_parameters: int
    schedule: object  # flow.lr_schedule schedule: a pure function of the update count
    model_spec: dict | None
    batches_per_epoch: int  # for RunStarted (the console's progress bar); 0 when unknown
    steps_in_flight: int  # steps sent ahead of their results (`steps_in_flight()`)
    begin_batch: int = 0  # batches of `begin_epoch` done before (a mid-epoch resume)
    watch: WatchSettings | None = None  # None: validation figures are only reported
    disp_batches: int = 20  # the Speedometer's window: the devices report their outputs every this many steps


@dataclass(frozen=True)
class FitChannels:
    train_batches: trio.MemoryReceiveChannel
    val_batches: trio.MemoryReceiveChannel | None
    work: list  # one MemorySendChannel per device, of TrainSlice, EvalSlice and SnapshotRequest
    results: trio.MemoryReceiveChannel  # TrainResult and EvalResult from every device
    server_requests: trio.MemorySendChannel | None  # None: one device updates itself (no kvstore)
    server_replies: trio.MemoryReceiveChannel | None
    outputs: trio.MemorySendChannel  # to the metric actor (with the events that go between its lines)
    saves: trio.MemorySendChannel | None  # to the checkpoint actor
    events: trio.MemorySendChannel
    stop: trio.Event | None = None  # set: stop after the current step, saving where the run is
    validations: trio.MemoryReceiveChannel | None = None  # each Validation from the metric actor (with a watch)


def slice_bounds(batch_size: int, num_devices: int) -> list[tuple[int, int]]:
    """Near-equal contiguous slices, one per device (the first ones one larger when uneven)."""
    sizes = [batch_size // num_devices + (replica < batch_size % num_devices) for replica in range(num_devices)]
    edges = list(itertools.accumulate(sizes, initial=0))
    return list(zip(edges[:-1], edges[1:]))


async def fit(settings: FitSettings, channels: FitChannels) -> RunFinished | RunStopped:
    """Runs the epochs and returns the run's summary (sent once every other actor is done, so it is the
    last event). Closes every channel it sends on, however it ends, so the actors downstream finish."""
    send_channels = [*channels.work, channels.outputs, channels.events]
    send_channels += [c for c in (channels.server_requests, channels.saves) if c is not None]
    try:
        return await _fit(settings, channels)
    finally:
        for channel in send_channels:
            channel.close()


# One device updates its own weights (no server), so the loop may queue its next steps while it
# computes: the hand-off between Trio and the worker thread then leaves the critical path, and a
# device that finds several steps queued runs them in one thread call (one hand-off, ~100-200 us,
# for all of them). Small batches go up to 16 at a time; each step in flight holds its batch, so
# large ones go fewer (at least 4), within ~64 MB.
_MIN_DEPTH, _MAX_DEPTH, _IN_FLIGHT_BYTES = 4, 16, 64 << 20


def steps_in_flight(server: bool, batch_bytes: int) -> int:
    """How many steps the loop sends ahead of their results (the work and result channels hold that many):
    with a parameter server each step waits for the update before the next is sent."""
    if server:
        return 1
    return max(_MIN_DEPTH, min(_MAX_DEPTH, _IN_FLIGHT_BYTES // max(batch_bytes, 1)))


@dataclass
class _Step:
    """A step sent to the devices whose results are not back yet."""

    epoch: int
    index: int
    samples: int  # real samples (the batch less its pad)
    slices: int  # results to wait for
    num_update: int | None  # training: the update this step makes; None: validation
    lr: float  # that update's (0.0: validation)
    told: bool  # the metric actor hears of it: it reports its statistics, or starts the Speedometer's clock


class _Loop:
    """The loop's state: steps in flight, the newest master weights each replica has not loaded yet,
    and the update count (the run's only one: each update's lr and the checkpoints' count come from it)."""

    def __init__(self, settings: FitSettings, channels: FitChannels):
        self.settings = settings
        self.channels = channels
        self.num_devices = len(settings.devices)
        self.unloaded_weights: list = [None] * self.num_devices
        self.num_update = settings.begin_update
        self.depth = settings.steps_in_flight
        self.in_flight: deque[_Step] = deque()
        # (epochs done, batches of the next done): where the weights are once the steps sent have
        # finished, and where the newest checkpoint of this run (or the one it resumed from) is.
        self.position = self.saved = (settings.begin_epoch, settings.begin_batch)
        self.skipped_updates = 0  # in this epoch: a NaN or inf loss, with train.skip_nonfinite

    async def send_step(self, epoch: int, index: int, batch, *, training: bool, report: bool, first: bool) -> int:
        """Hands each device its slice of `batch` (`report`: read back after it; `first`: the epoch's first
        here); returns its real samples."""
        size = batch.data.shape[0]
        real = size - batch.pad
        weight = None
        if batch.pad:  # pads count in no loss and no metric
            weight = torch.ones(size)
            weight[real:] = 0
        num_update, lr = None, 0.0
        if training:
            self.num_update += 1
            num_update, lr = self.num_update, self.settings.schedule.lr_at(self.num_update)
            if self.settings.schedule.changes_at(num_update):  # through the metric actor: in the log's order
                await self.channels.outputs.send(LearningRateChanged(num_update, lr))
        bounds = [(0, size)] if self.num_devices == 1 else slice_bounds(size, self.num_devices)
        slices = 0
        for replica, (start, stop) in enumerate(bounds):
            if stop > start:
                weights, self.unloaded_weights[replica] = self.unloaded_weights[replica], None
                # One device takes the whole batch: no slicing, as every torch call on the Trio thread
                # may wait for the GIL that the worker thread holds.
                whole = (start, stop) == (0, size)
                data = batch.data if whole else batch.data[start:stop]
                label = batch.label if whole else batch.label[start:stop]
                mirror = batch.mirror if whole or batch.mirror is None else batch.mirror[start:stop]
                slice_samples = max(0, min(stop, real) - start)
                if training:
                    message = TrainSlice(epoch, data, label, slice_samples,
                                         None if weight is None else weight[start:stop], 1.0 / real, lr, weights,
                                         index, report, mirror)
                else:
                    message = EvalSlice(data, label, slice_samples, weights, epoch, index, report, mirror)
                await hand_off.send(self.channels.work[replica], message)
                slices += 1
        self.in_flight.append(_Step(epoch, index, real, slices, num_update, lr, report or first))
        return real

    async def finish_step(self) -> None:
        """Waits for the oldest step's results, has the server update (several devices), passes the outputs on."""
        step = self.in_flight.popleft()
        results = sorted([await hand_off.receive(self.channels.results) for _ in range(step.slices)],
                         key=lambda result: result.replica)
        if step.num_update is not None and results[0].monitor is not None:  # before the batch's Speedometer line, as MXNet
            await self.channels.outputs.send(results[0].monitor)
        skipped = step.num_update is not None and any(r.nonfinite_loss for r in results)
        if step.num_update is not None and self.channels.server_requests is not None:
            await self.channels.server_requests.send(
                Update(step.num_update, step.lr, [r.gradients for r in results], step.samples, skipped))
            updated = await self.channels.server_replies.receive()
            self.unloaded_weights = [updated.weights] * self.num_devices
            skipped = updated.skipped  # another process's loss, too
        self.skipped_updates += skipped
        if step.told:  # (the steps between carry nothing the metric actor reads: one hand-off a step saved)
            # The step's end as the devices saw it (steps queued ahead finish in bursts, long before the loop
            # collects them); a server's update is part of the step.
            finished = time.perf_counter() if self.channels.server_requests is not None else max(
                result.finished for result in results)
            split = "val" if step.num_update is None else "train"
            await hand_off.send(self.channels.outputs, StepStatistics(
                split, step.epoch, step.index, in_update_order(results), finished, step.lr))

    def stop_requested(self) -> bool:
        return self.channels.stop is not None and self.channels.stop.is_set()

    async def run_epoch(self, epoch: int, *, training: bool, first_batch: int = 0, stoppable: bool = True) -> bool:
        """One pass over the epoch's batches from `first_batch` (training or validation), then its
        SplitEnd to the metric actor. False: a stop request ended it early (its steps sent have finished);
        not `stoppable`, it runs whole."""
        start = time.perf_counter()
        batches = self.channels.train_batches if training else self.channels.val_batches
        what = "training" if training else "validation"
        index, samples = first_batch, 0
        held = None  # the batch in hand, sent once the next one shows whether it ends a window
        while True:
            following = await self._next(batches, what)
            ended = isinstance(following, LoaderEpochEnd)
            stopping = stoppable and not ended and self.stop_requested()
            if held is not None:
                if len(self.in_flight) >= self.depth:
                    await self.finish_step()
                report = (ended or stopping or (index % self.settings.disp_batches == 0 and index != first_batch)
                          or self.num_devices > following.data.shape[0])  # a device left out must have reported
                samples += await self.send_step(epoch, index, held, training=training, report=report,
                                                first=index == first_batch)
                index += 1
                if training:
                    self.position = (epoch, index)
            if stopping:
                while self.in_flight:
                    await self.finish_step()
                return False
            if ended:
                break
            held = following
        while self.in_flight:
            await self.finish_step()
        if training:
            self.position = (epoch + 1, 0)
        if training and self.skipped_updates:
            await self.channels.events.send(NonFiniteUpdatesSkipped(epoch, self.skipped_updates, index - first_batch))
            self.skipped_updates = 0
        split = "train" if training else "val"
        seconds = time.perf_counter() - start if training else 0.0
        await self.channels.outputs.send(SplitEnd(split, epoch, index - first_batch, samples, seconds))
        return True

    async def save(self, epochs: int, batch: int = 0, extra_states: dict | None = None, *, periodic: bool = True,
                   best: tuple[str, float] | None = None) -> None:
        """Hands the checkpoint actor the model after `epochs` epochs and `batch` batches of the next
        (from the first replica) and the updater's state (with `extra_states`); mid-epoch, every replica's
        random state too. As checkpoint `epochs` (`batch`: its mid-epoch one) when `periodic`, and as the
        best one with `best`."""
        replicas = []
        for replica in range(self.num_devices if batch else 1):
            reply_send, reply_receive = trio.open_memory_channel(1)
            weights, self.unloaded_weights[replica] = self.unloaded_weights[replica], None
            await self.channels.work[replica].send(SnapshotRequest(weights, reply_send, model=replica == 0))
            replicas.append(await reply_receive.receive())
        replica = replicas[0]
        updater_state = replica.updater
        if self.channels.server_requests is not None:
            server_send, server_receive = trio.open_memory_channel(1)
            await self.channels.server_requests.send(StateRequest(server_send))
            updater_state = await server_receive.receive()
        states = {"epoch": epochs, "num_update": self.num_update, "seed": self.settings.seed,
                  "updater": updater_state, **(extra_states or {})}
        if batch:
            states["batch"] = batch
            states["random"] = [{"epoch": r.random.epoch, "generator": r.random.generator} for r in replicas]
        if periodic:
            await self.channels.saves.send(Save(epochs, replica.model, states, self.settings.model_spec, batch))
            self.saved = (epochs, batch)
        if best is not None:
            await self.channels.saves.send(Save(epochs, replica.model, states, self.settings.model_spec, best=best))

    async def stopped(self, start: float, extra_states: dict | None) -> RunStopped:
        """Saves where the run stands (unless a checkpoint already holds it), with `extra_states`, and says
        where it stopped."""
        if self.channels.saves is not None and self.position != self.saved:
            await self.save(*self.position, extra_states)
        return RunStopped(*self.position, self.num_update, time.perf_counter() - start)

    @staticmethod
    async def _next(channel: trio.MemoryReceiveChannel, what: str):
        try:
            return await hand_off.receive(channel)
        except trio.EndOfChannel:
            raise FlowError(f"the {what} data ended before the epoch did") from None


def in_update_order(results: list) -> tuple:
    """The statistics the devices' results (in replica order) report, as MXNet's update_metric would have
    added them: step by step, and device by device within a step."""
    windows = [dict(result.statistics) for result in results if result.statistics is not None]
    steps = sorted(set().union(*windows))
    return tuple(window[step] for step in steps for window in windows if step in window)


class _Watches:
    """The best checkpoint's watch (any improvement) and early stopping's (by more than min_delta) of
    one validation metric, carried on from the resumed checkpoint's states."""

    def __init__(self, settings: WatchSettings):
        self.settings = settings
        self.best = MetricWatch(settings.metric, settings.mode)
        self.early_stop = MetricWatch(settings.metric, settings.mode, settings.min_delta)
        resumed = settings.resumed or {}
        self.best.resume(resumed.get("best"))
        self.early_stop.resume(resumed.get("early_stop"))

    def states(self) -> dict:
        """For the checkpoint's .states: {"watch": ...}, which a resumed run's WatchSettings.resumed gets."""
        return {"watch": {"best": self.best.state(), "early_stop": self.early_stop.state()}}

    def stop_event(self, epoch: int) -> EarlyStopped | None:
        patience = self.settings.patience
        if not patience or self.early_stop.stale_epochs < patience:
            return None
        best = math.nan if self.early_stop.best is None else self.early_stop.best
        return EarlyStopped(epoch, self.settings.metric, best, self.early_stop.best_epoch, patience,
                            self.settings.min_delta)


async def _fit(settings: FitSettings, channels: FitChannels) -> RunFinished | RunStopped:
    loop = _Loop(settings, channels)
    watches = _Watches(settings.watch) if settings.watch is not None else None
    start = time.perf_counter()
    await channels.events.send(RunStarted(settings.begin_epoch, settings.num_epochs, list(settings.devices),
                                          settings.kv_store, settings.num_parameters, settings.batches_per_epoch))
    epochs = 0
    for epoch in range(settings.begin_epoch, settings.num_epochs):
        first_batch = settings.begin_batch if epoch == settings.begin_epoch else 0
        if not await loop.run_epoch(epoch, training=True, first_batch=first_batch):
            return await loop.stopped(start, watches and watches.states())
        epochs += 1
        if watches is None:
            if channels.saves is not None and (epoch + 1) % settings.checkpoint_period == 0:
                await loop.save(epoch + 1)
            if channels.val_batches is not None and not await loop.run_epoch(epoch, training=False):
                return await loop.stopped(start, None)
            continue
        # With a watch the checkpoint waits for the validation, so that its states hold the watches after
        # it and a run resumed from it decides as this one would have; for that a stop request waits for
        # the validation's end too (the next epoch's first step stops).
        await loop.run_epoch(epoch, training=False, stoppable=False)
        validation = await channels.validations.receive()
        improved = watches.best.observe(epoch, validation.metrics)
        watches.early_stop.observe(epoch, validation.metrics)
        periodic = (epoch + 1) % settings.checkpoint_period == 0
        best = (settings.watch.metric, watches.best.best) if improved and settings.watch.best_checkpoint else None
        if channels.saves is not None and (periodic or best):
            await loop.save(epoch + 1, 0, watches.states(), periodic=periodic, best=best)
        if (stop := watches.stop_event(epoch)) is not None:
            await channels.events.send(stop)
            break
    return RunFinished(epochs, loop.num_update, time.perf_counter() - start)
