"""Scoring and predicting with a saved checkpoint: the one place where the loader and the compute
actors are wired for a forward pass alone (flow/run.py wires them for training; flow/builders.py
makes the settings of both).

    metrics = await flow.score(config, epoch=4)          # [("accuracy", 0.97), ("cross-entropy", 0.08)]
    async with flow.predict(config, "new.rec", epoch=4) as batches:
        async for ids, probabilities in batches:         # numpy: uint64 (n,), float32 (n, classes)
            ...

The model is rebuilt from `{model_prefix}-model.json`, loaded with the epoch's `.params` and put in
eval mode; no optimizer is built. The loader reads the file in order, whole, without augmentation
(as validation does: `builders.loader_settings(data, "val", seed)`), and each batch is split over
`train.devices` as in training, so that a score adds the very statistics, in the same order, that
the run's validation after that epoch added: it equals that run's `Validation-` figures bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, NamedTuple

import numpy as np
import torch
import trio

from flow import builders, checkpoints, models
from flow import channels as hand_off
from flow.actors import loader as loader_actor
from flow.actors.compute import EvalSlice, PredictSlice, compute
from flow.actors.metrics import SplitEnd, StepStatistics, metrics
from flow.config import Config
from flow.errors import ConfigError, unwrapped_errors
from flow.fit import in_update_order, slice_bounds
from flow.recordio import RecordTable

NameValues = list[tuple[str, float]]

# Batches handed to the devices ahead of the one whose results are awaited: enough that the loader,
# the devices and the consumer overlap, few enough that memory stays a handful of batches.
_IN_FLIGHT = 2


class Predictions(NamedTuple):
    """One batch's predictions, pads trimmed: the records' IRHeader ids and their class probabilities."""

    ids: np.ndarray  # uint64, (n,)
    probabilities: np.ndarray  # float32, (n, classes): softmax of the model's outputs


async def score(config: Config, epoch: int | None = None, *, model: torch.nn.Module | None = None) -> NameValues:
    """The metrics (train.metrics, train.top_k) of checkpoint `epoch` (None: checkpoint.load_epoch) on
    data.data_val, as (name, value) pairs: the `Validation-` figures of the epoch that wrote it.

    `model`: your own module to load the checkpoint into, in place of the one its model.json describes.
    """
    epoch = config.checkpoint.load_epoch if epoch is None else epoch
    if not config.data.data_val:
        raise ConfigError("data.data_val: no record file to score on")
    plan = await trio.to_thread.run_sync(_plan, config, epoch, config.data.data_val, model, True)
    statistics_send, statistics_receive = trio.open_memory_channel(_IN_FLIGHT)
    event_send, event_receive = trio.open_memory_channel(1)

    def evaluate(data: torch.Tensor, label: torch.Tensor, samples: int) -> EvalSlice:
        return EvalSlice(data, label, samples, None)

    async def add_up(batch: loader_actor.Batch, results: list) -> None:
        await hand_off.send(statistics_send, StepStatistics("val", epoch - 1, batch.index, in_update_order(results),
                                                             time.perf_counter()))

    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics, builders.metric_settings(config), statistics_receive, event_send)
            with statistics_send:
                batches, samples = await _forward(config, plan, evaluate, add_up)
                await statistics_send.send(SplitEnd("val", epoch - 1, batches, samples, 0.0))
            validation = await event_receive.receive()
    return validation.metrics


@asynccontextmanager
async def predict(config: Config, data: str, epoch: int | None = None, *,
                  model: torch.nn.Module | None = None) -> AsyncIterator[trio.MemoryReceiveChannel]:
    """Predicts each record of the .rec `data` (in file order) with checkpoint `epoch` (None:
    checkpoint.load_epoch): inside the block, an async iterator of `Predictions`, one a batch.

    The records' labels are not read as classes (any label will do). Leaving the block stops the
    loader and the devices; only the batches in flight (a few) are ever held.
    """
    epoch = config.checkpoint.load_epoch if epoch is None else epoch
    plan = await trio.to_thread.run_sync(_plan, config, epoch, data, model, False)
    predictions_send, predictions_receive = trio.open_memory_channel(0)

    def forward(batch_data: torch.Tensor, label: torch.Tensor, samples: int) -> PredictSlice:
        return PredictSlice(batch_data, samples)

    async def hand_on(batch: loader_actor.Batch, results: list) -> None:
        real = len(batch.data) - batch.pad
        parts = [result.probabilities for result in results]
        probabilities = parts[0] if len(parts) == 1 else torch.cat(parts)
        await predictions_send.send(Predictions(batch.ids[:real], probabilities.numpy()))

    async def predict_all() -> None:
        with predictions_send:
            await _forward(config, plan, forward, hand_on)

    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(predict_all)
            yield predictions_receive
            nursery.cancel_scope.cancel()  # leaving the block ends the predictions, all read or not


@dataclass(frozen=True)
class _Plan:
    """Everything read before any actor starts: a missing checkpoint or a bad file fails here."""

    model: torch.nn.Module
    loader: loader_actor.LoaderSettings
    records: RecordTable


def _plan(config: Config, epoch: int, path: str, model: torch.nn.Module | None, labelled: bool) -> _Plan:
    """`labelled`: the records' labels are class ids (scoring), else whatever they are is passed over."""
    loaded = checkpoint_model(config, epoch, model)
    data = config.data
    if path != data.data_val:  # another file than the validation one: read as it would be, without its .idx
        data = dataclasses.replace(data, data_val=path, data_val_idx="")
    settings = dataclasses.replace(builders.loader_settings(data, "val", config.train.seed, config.train.devices),
                                   num_classes=data.num_classes if labelled else 0)
    return _Plan(loaded, settings, loader_actor.record_table(settings))


def checkpoint_model(config: Config, epoch: int, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """checkpoint.model_prefix's model at `epoch`, in eval mode: `model` (or the one the prefix's
    model.json describes, which must take data.image_shape) with that epoch's weights."""
    prefix = config.checkpoint.model_prefix
    if not prefix:
        raise ConfigError("checkpoint.model_prefix: needed to find the checkpoint")
    if epoch < 1:
        raise ConfigError(f"checkpoint.load_epoch: which checkpoint to load (--load-epoch N, N >= 1), got {epoch}")
    state, _ = checkpoints.load_checkpoint(prefix, epoch)
    if model is None:
        spec = checkpoints.load_model_spec(prefix)
        shape = models.spec_image_shape(spec)
        if shape != tuple(config.data.image_shape):
            raise ConfigError(f"data.image_shape: the model of {checkpoints.model_json_path(prefix)} takes "
                              f"{list(shape)} images, not {list(config.data.image_shape)}")
        with torch.random.fork_rng(devices=[]):  # building draws default weights from torch's RNG: leave it be
            model = models.build_from_spec(spec)
    model.load_state_dict(state)
    return model.eval()


async def _forward(config: Config, plan: _Plan, message: Callable, consume: Callable) -> tuple[int, int]:
    """Runs every batch of the plan's file through the devices, in order: each device gets
    `message(data, label, real samples)` for its slice (as the fit loop slices a batch), and
    `consume(batch, results)` gets the batch with its slices' results in device order. Returns
    (batches, real samples)."""
    devices = config.train.devices
    batch_send, batch_receive = trio.open_memory_channel(0)
    pending_send, pending_receive = trio.open_memory_channel(_IN_FLIGHT)  # batches whose slices are out
    work_sends, result_receives = [], []
    batches = samples = 0
    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            for replica in range(len(devices)):
                work_send, work_receive = trio.open_memory_channel(_IN_FLIGHT)
                result_send, result_receive = trio.open_memory_channel(_IN_FLIGHT)  # one each: no sorting out
                work_sends.append(work_send)
                result_receives.append(result_receive)
                # Copying a big model takes a while: not on the Trio thread.
                replica_model = await trio.to_thread.run_sync(copy.deepcopy, plan.model) if replica else plan.model
                await nursery.start(compute, builders.compute_settings(config, replica), replica_model, None,
                                    work_receive, result_send)
            nursery.start_soon(loader_actor.loader, plan.loader, plan.records, batch_send, 0, 1)
            nursery.start_soon(_hand_out, batch_receive, work_sends, pending_send, message)
            async for batch, replicas in pending_receive:
                results = [await hand_off.receive(result_receives[replica]) for replica in replicas]
                await consume(batch, results)
                batches += 1
                samples += len(batch.data) - batch.pad
    return batches, samples


async def _hand_out(batch_receive: trio.MemoryReceiveChannel, work_sends: list, pending_send: trio.MemorySendChannel,
                    message: Callable) -> None:
    """Each batch's slices to the devices, then the batch (with the devices that have a slice of it)
    to `pending_send`; closes the devices' channels at the end, which ends them."""
    with batch_receive, pending_send, ExitStack() as closing:
        for work_send in work_sends:
            closing.enter_context(work_send)
        async for batch in batch_receive:
            if isinstance(batch, loader_actor.EpochEnd):
                continue
            size = len(batch.data)
            real = size - batch.pad
            bounds = [(0, size)] if len(work_sends) == 1 else slice_bounds(size, len(work_sends))
            replicas = []
            for replica, (start, stop) in enumerate(bounds):
                if stop > start:
                    whole = (start, stop) == (0, size)  # one device: no slicing (as the fit loop)
                    await hand_off.send(work_sends[replica], message(
                        batch.data if whole else batch.data[start:stop],
                        batch.label if whole else batch.label[start:stop], max(0, min(stop, real) - start)))
                    replicas.append(replica)
            await pending_send.send((batch, replicas))
