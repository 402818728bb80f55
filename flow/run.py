"""A training run: the one place where the actors are made and wired together (flow/builders.py
makes their settings from the config).

    async with flow.open_run(config) as run:
        async for event in run.events():
            ...
        result = await run.wait()

Every actor is a task in one nursery that lives inside the caller's `async with`: an actor's
exception cancels the others and comes out of `open_run` as itself; leaving the block or
cancelling the caller's scope cancels every actor, and each closes what it owns.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import torch
# torch.optim imports torch._dynamo when it makes its first optimizer: seconds, with stretches of
# hundreds of ms that hold the GIL, which would starve the caller's event loop while the actors
# start. Here it is part of importing flow.run instead.
import torch._dynamo  # noqa: F401
import torch.nn.functional as F
import trio

from flow.actors import loader as loader_actor
from flow.actors.bus import Subscription, bus
from flow.actors.feed import feed
from flow.actors.checkpoint import checkpoint
from flow.actors.compute import RandomState, compute
from flow.actors.metrics import metrics
from flow.actors.param_server import param_server
from flow import builders, checkpoints, models, mxnet_import, optim
from flow.config import CheckpointConfig, Config
from flow.distributed import Cluster, join
from flow.errors import CheckpointError, ConfigError, RecordIOError, first_cause, unwrapped_errors
from flow.event_log import EventLogWriter, event_log_path
from flow.events import (CheckpointSaved, CheckpointsSkipped, CheckpointUnverified, EpochEnd, LearningRateAdjusted,
                         NumExamplesBelowRecords, RunFailed, RunFinished, RunStopped, Validation)
from flow.fit import FitChannels, fit
from flow.lr_schedule import build_schedule, updates_per_epoch
from flow.optim import Updater
from flow.recordio import RecordTable
from flow.seeding import derive_seed


def softmax_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-sample loss of MXNet's SoftmaxOutput: cross-entropy of softmax(logits) with integer labels."""
    return F.cross_entropy(logits, label.long(), reduction="none")


@dataclass
class RunResult:
    """What a finished run reports: the last epoch's figures, and every checkpoint it wrote."""

    epochs: int = 0
    updates: int = 0
    seconds: float = 0.0
    train_metrics: list[tuple[str, float]] = field(default_factory=list)
    validation_metrics: list[tuple[str, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    stopped_at: tuple[int, int] | None = None  # stopped on request: (epoch, batch) where, its checkpoint saved there


class Run:
    """A run in progress: subscribe to its events, wait for its result, stop or cancel it."""

    def __init__(self, cancel_scope: trio.CancelScope, subscriptions: list[Subscription], distributed: bool):
        self._cancel_scope = cancel_scope
        self._subscriptions = subscriptions
        self._stop_request = trio.Event()
        self._distributed = distributed
        self._finished = trio.Event()
        self._result = RunResult()
        self.error: BaseException | None = None  # what made the run fail, if it did
        self._tracker = self.events()
        self._training_scope = trio.CancelScope()  # the training actors'

    def events(self, max_buffer: int = 1024, policy: str = "block") -> Subscription:
        """Every event from now on. Call it before the first await inside `open_run` to see RunStarted.

        policy "block": a subscriber that falls behind holds training back once `max_buffer`
        events wait; "drop_oldest": it never does, and `subscription.dropped` counts what it lost.
        """
        subscription = Subscription(max_buffer, policy)
        self._subscriptions.append(subscription)
        return subscription

    async def wait(self) -> RunResult:
        """Waits until the run ends and returns its result; raises the run's error if it failed."""
        await self._finished.wait()
        if self.error is not None:
            raise self.error
        return self._result

    def cancel(self) -> None:
        self._cancel_scope.cancel()

    def stop(self) -> None:
        """Asks the run to stop after its current step and save a checkpoint where it is (mid-epoch
        too), from which `checkpoint.resume` goes on as if it had never stopped; the run then ends
        with RunStopped. Without `checkpoint.model_prefix` nothing is saved. Processes of a
        distributed run would stop at different steps and wait for each other forever: there it
        cancels, as `cancel()` does, and the newest checkpoint is the last one saved."""
        if self._distributed:
            self.cancel()
        self._stop_request.set()

    async def _log(self, logger: Callable, subscription: Subscription) -> None:
        """Runs a logger on its subscription; one that fails ends the run with its error, as an actor would
        (training is cancelled and the stream ends with RunFailed)."""
        try:
            await logger(subscription)
        except Exception as error:
            if self.error is None:
                self.error = error
            self._training_scope.cancel()
        finally:
            subscription.close()  # a logger gone never holds the bus back

    async def _track(self) -> None:
        async for event in self._tracker:
            if isinstance(event, EpochEnd):
                self._result.train_metrics = event.metrics
            elif isinstance(event, Validation):
                self._result.validation_metrics = event.metrics
            elif isinstance(event, CheckpointSaved):
                self._result.checkpoints.append(event.params_path)
            elif isinstance(event, RunFinished):
                self._result.epochs, self._result.updates, self._result.seconds = event.epochs, event.updates, event.seconds
            elif isinstance(event, RunStopped):
                self._result.updates, self._result.seconds = event.updates, event.seconds
                self._result.stopped_at = (event.epoch, event.batch)
        self._finished.set()


@asynccontextmanager
async def open_run(config: Config, *, model: torch.nn.Module | None = None, loss: Callable | None = None,
                   train_data=None, val_data=None) -> AsyncIterator[Run]:
    """Starts a run of `config`.

    `model` and `loss` (per-sample, like `softmax_cross_entropy`) replace the configured network
    and loss; `train_data` and `val_data` replace the RecordIO files: an async iterable of batches
    (iterated once per epoch) or a callable epoch -> async iterable, as `flow.actors.feed` describes.
    """
    # Seconds of reading checkpoints and indexes, building the model and joining the process group:
    # not on the caller's event loop. Cancelling waits for it to end (a rendezvous at worst times
    # out), so that no half-made plan, or process group, lives on in an abandoned thread.
    plan = await trio.to_thread.run_sync(_plan, config, model, train_data, val_data)
    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            run = Run(nursery.cancel_scope, plan.subscriptions, plan.cluster.distributed)
            nursery.start_soon(run._track)
            for logger in plan.loggers:
                nursery.start_soon(run._log, logger, run.events())
            event_send, event_receive = trio.open_memory_channel(0)
            log = EventLogWriter(event_log_path(config.checkpoint.model_prefix)) if plan.writes_files else None
            nursery.start_soon(bus, event_receive, plan.subscriptions, log)
            nursery.start_soon(_training, config, plan, loss or softmax_cross_entropy, event_send, run)
            yield run
            nursery.cancel_scope.cancel()  # leaving the block ends the run, finished or not
    if run.error is not None:
        raise run.error


async def train(config: Config, **options) -> RunResult:
    """Runs `config` to the end and returns its result (`options` as for open_run)."""
    async with open_run(config, **options) as run:
        return await run.wait()


@dataclass
class _Plan:
    """Everything decided before any actor starts: a bad config fails here, before training."""

    model: torch.nn.Module
    model_spec: dict | None
    begin_epoch: int
    begin_batch: int  # batches of begin_epoch done (a mid-epoch checkpoint)
    begin_update: int
    updater_state: dict | None
    random_states: list[RandomState] | None  # each replica's, where a mid-epoch checkpoint left them
    schedule: object
    train_loader: loader_actor.LoaderSettings | None  # None: the caller's train_data
    val_loader: loader_actor.LoaderSettings | None
    train_records: RecordTable | None  # the loaders' record tables, read once here (None: no records to read)
    val_records: RecordTable | None
    train_data: object
    val_data: object
    batches_per_epoch: int  # 0: unknown (custom data)
    cluster: Cluster
    writes_files: bool  # checkpoints and the event log: one process writes them (rank 0)
    warnings: list  # events published before training starts (warnings, fit.py's resume line)
    watch: object  # flow.metric_watch.WatchSettings, or None: the fit loop watches no validation metric
    loggers: list  # [log]'s loggers, each an async function of a subscription (one process runs them: rank 0)
    decode_threads: int  # the loaders' decode threads, beside the devices' torch threads (flow/thread_budget.py)
    subscriptions: list[Subscription] = field(default_factory=list)


def _plan(config: Config, model: torch.nn.Module | None, train_data, val_data) -> _Plan:
    data, train, saving = config.data, config.train, config.checkpoint
    resumed, skipped = _resume_point(saving)
    # Before any other file is read or process group joined: a run with nothing to train says so at once.
    begin_epoch = resumed.epoch if resumed else 0 if saving.resume else saving.load_epoch
    if begin_epoch > train.num_epochs:
        raise ConfigError(f"checkpoint.load_epoch ({begin_epoch}) is past train.num_epochs ({train.num_epochs}): "
                          f"nothing to train; raise train.num_epochs or load an earlier epoch")
    if begin_epoch == train.num_epochs:  # e.g. --resume after the run finished
        raise ConfigError(f"checkpoint.load_epoch ({begin_epoch}) is train.num_epochs: nothing left to train; "
                          f"raise train.num_epochs to train more")
    _check_devices(train.devices)
    cluster = join(train.kv_store, train.devices, train.dist_timeout)
    train_loader = val_loader = None
    if train_data is None:
        if not data.data_train and not data.benchmark:
            raise ConfigError("data.data_train: expected the training .rec file, got nothing")
        train_loader = builders.loader_settings(data, "train", train.seed, train.devices)
        if data.data_val and val_data is None:
            val_loader = builders.loader_settings(data, "val", train.seed, train.devices)
    train_records = loader_actor.record_table(train_loader) if train_loader else None
    val_records = loader_actor.record_table(val_loader) if val_loader else None
    for settings, table in ((train_loader, train_records), (val_loader, val_records)):
        if table is not None:
            _check_label_width(settings, table)
    if train_records is not None and not len(train_records):
        raise RecordIOError("no records: nothing to train on (data.data_train)", train_loader.path)
    records = _record_count(train_loader, train_records) if train_loader else 0
    warnings = []
    if data.num_examples and data.num_examples < records and not data.benchmark and cluster.rank == 0:
        warnings.append(NumExamplesBelowRecords(data.num_examples, records, train_loader.path))
    num_examples = data.num_examples or records
    if num_examples:
        epoch_size = updates_per_epoch(num_examples, data.batch_size, max(data.num_parts, cluster.world_size))
    elif train.lr_step_epochs or train.lr_schedule != "multifactor" or train.warmup_epochs:
        raise ConfigError("data.num_examples: the lr schedule counts in epochs, so custom data needs num_examples")
    else:
        epoch_size = 1  # a constant lr: the count never matters
    if train_loader is not None and cluster.world_size > 1:
        # Each process its own shard, as fit.py (num_parts = workers, part_index = rank), all of one
        # length in batches, as fit.py's ResizeIter: shards may differ, but every process runs every update.
        train_loader = dataclasses.replace(train_loader, num_parts=cluster.world_size, part_index=cluster.rank,
                                           epoch_batches=epoch_size)

    begin_batch = resumed.batch if resumed else 0
    begin_update, updater_state, model_state, random_states, resumed_watch = 0, None, None, None, None
    if begin_epoch or begin_batch:
        if not saving.model_prefix:
            raise ConfigError("checkpoint.load_epoch: needs checkpoint.model_prefix to find the checkpoint")
        loaded = resumed or checkpoints.read_checkpoint(saving.model_prefix, begin_epoch)
        model_state, begin_update = loaded.model_state, loaded.states["num_update"]
        updater_state, resumed_watch = loaded.states["updater"], loaded.states.get("watch")
        if begin_update is None:  # imported from MXNet, which counts no updates: as fit.py, epochs x epoch size
            begin_update = begin_epoch * epoch_size
        if begin_batch:
            random_states = _random_states(loaded, saving.model_prefix, len(train.devices))
        if not loaded.verified and cluster.rank == 0:
            warnings.append(CheckpointUnverified(str(checkpoints.params_path(saving.model_prefix, begin_epoch,
                                                                             begin_batch))))
    if skipped and cluster.rank == 0:
        warnings.append(CheckpointsSkipped(begin_epoch, skipped))
    watch = builders.watch_settings(config, resumed_watch)
    if watch is not None and val_loader is None and val_data is None:
        key = "checkpoint.best_metric" if config.checkpoint.best_metric else "train.early_stop_patience"
        raise ConfigError(f"{key}: watches the validation metric, but there is no validation data (data.data_val)")
    model, spec = _model(config, model)
    if model_state is not None:
        model.load_state_dict(model_state)
    _check_optimizer_fits(config, model, updater_state, begin_epoch, begin_batch)
    schedule = build_schedule(
        train.lr_schedule, train.lr, epoch_size=epoch_size, num_epochs=train.num_epochs,
        lr_factor=train.lr_factor, lr_step_epochs=train.lr_step_epochs, lr_factor_epochs=train.lr_factor_epochs,
        lr_pwr=train.lr_pwr, warmup_steps=math.ceil(train.warmup_epochs * epoch_size),
        warmup_begin_lr=train.warmup_begin_lr, warmup_mode=train.warmup_mode)
    if begin_epoch and (resumed_lr := schedule.resumed_lr(begin_update)) is not None:
        warnings.append(LearningRateAdjusted(begin_epoch, resumed_lr))
    decode_threads = builders.loader_threads(config, reads_records=train_loader is not None or val_loader is not None)
    if cluster.rank == 0:
        warnings.extend(builders.thread_warnings(config, decode_threads))
    return _Plan(model, spec, begin_epoch, begin_batch, begin_update, updater_state, random_states, schedule,
                 train_loader, val_loader,
                 train_records, val_records, train_data, val_data, epoch_size if num_examples else 0, cluster,
                 writes_files=bool(saving.model_prefix) and cluster.rank == 0, warnings=warnings, watch=watch,
                 loggers=builders.loggers(config.log) if cluster.rank == 0 else [], decode_threads=decode_threads)


def _resume_point(saving: CheckpointConfig) -> tuple[checkpoints.Checkpoint | None, list[str]]:
    """With checkpoint.resume, the newest checkpoint that verifies (None: the prefix has none, a fresh
    start) and the newer ones passed over, each with what is wrong with it."""
    if not saving.resume:
        return None, []
    if not saving.model_prefix:
        raise ConfigError("checkpoint.resume: needs checkpoint.model_prefix to find the checkpoints")
    resumed, skipped = checkpoints.newest_checkpoint(saving.model_prefix)
    if resumed is None and skipped:
        raise CheckpointError(f"no checkpoint to resume from verifies: {'; '.join(skipped)}; move them away to "
                              f"start afresh")
    return resumed, skipped


def _random_states(loaded: checkpoints.Checkpoint, prefix: str, devices: int) -> list[RandomState]:
    """Each replica's random state from a mid-epoch checkpoint, which resumes only on as many devices
    (each device's slice of a batch, and its draws, depend on how many there are)."""
    saved = loaded.states.get("random")
    path = checkpoints.states_path(prefix, loaded.epoch, loaded.batch)
    if not isinstance(saved, list) or not all(isinstance(r, dict) and isinstance(r.get("generator"), torch.Tensor)
                                              for r in saved):
        raise CheckpointError("a mid-epoch checkpoint without the replicas' random states", path)
    if len(saved) != devices:
        raise ConfigError(f"train.devices: the run stopped mid-epoch on {len(saved)} device(s) and resumes only on "
                          f"as many, got {devices}; or resume from the epoch's start (checkpoint.load_epoch = "
                          f"{loaded.epoch})", path)
    return [RandomState(r.get("epoch"), r["generator"]) for r in saved]


def _check_optimizer_fits(config: Config, model: torch.nn.Module, updater_state: dict | None,
                          begin_epoch: int, begin_batch: int) -> None:
    """The lr_mult/wd_mult patterns name parameters of the model, and a resumed optimizer state is the optimizer's."""
    train = config.train
    names = [name for name, _ in model.named_parameters()]
    unmatched = optim.unmatched_pattern(names, train.lr_mult, train.wd_mult)
    if unmatched:
        key, pattern = unmatched
        raise ConfigError(f"train.{key}: pattern {pattern!r} matches no parameter name of the model "
                          f"({', '.join(names[:4]) or 'it has none'}{', ...' if len(names) > 4 else ''})")
    if updater_state is not None:
        optim.check_resumable(updater_state, train.optimizer,
                              checkpoints.states_path(config.checkpoint.model_prefix, begin_epoch, begin_batch))


def _check_devices(devices: tuple[str, ...]) -> None:
    """Each of train.devices is one this torch and machine have: a device torch cannot place a model on
    would fail at the replica's start, in torch's words."""
    for name in devices:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"train.devices: {name!r} is not a device (expected 'cpu' or 'cuda:N')") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"train.devices: {name!r}, but this machine has no CUDA GPU this torch "
                                  f"({torch.__version__}) can use; use \"cpu\"")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(f"train.devices: {name!r}, but this machine has {torch.cuda.device_count()} "
                                  f"CUDA GPU(s), numbered from 0")


def _check_label_width(settings: loader_actor.LoaderSettings, table: RecordTable) -> None:
    """As MXNet at load time: records with another number of labels than data.label_width are refused.

    Records of one file carry the same number (the loader checks them all), so the first one's
    header says it: flag N is N labels, flag 0 one.
    """
    if not len(table) or 0 in table.problems:
        return  # no records, or a bad first one: the loader names it (or skips it, with data.skip_bad_records)
    labels = max(int(table.flags[0]), 1)
    if labels != settings.label_width:
        raise ConfigError(f"data.label_width: the records of {settings.path} carry {labels} labels, but "
                          f"data.label_width is {settings.label_width}; set it to {labels}, with a loss "
                          f"that takes {labels} labels")


def _record_count(settings: loader_actor.LoaderSettings, table: RecordTable | None) -> int:
    """Records an epoch reads (fit.py's num_examples when not given), over all shards."""
    if table is None:  # benchmark: synthetic batches
        return loader_actor.SYNTHETIC_BATCHES * settings.batch_size
    return len(table)


def _model(config: Config, model: torch.nn.Module | None) -> tuple[torch.nn.Module, dict | None]:
    """The model to train and its spec: the caller's, a fine-tuned checkpoint, or the configured network."""
    if model is not None:
        return model, None
    with torch.random.fork_rng(devices=[]):  # building draws default weights from torch's RNG: leave it as it was
        return _built_model(config)


def _built_model(config: Config) -> tuple[torch.nn.Module, dict | None]:
    data, network = config.data, config.model
    generator = torch.Generator().manual_seed(derive_seed(config.train.seed, "init"))
    initializer = network.initializer if network.initializer != "auto" else models.default_initializer(network.network)
    if network.pretrained_prefix:
        pretrained, spec = _pretrained(config)
        tuned = models.fine_tune(pretrained, data.num_classes, network.layer_before_fullc or None,
                                 image_shape=data.image_shape, initializer=initializer, generator=generator)
        return tuned, models.with_fine_tune(spec, data.num_classes, network.layer_before_fullc or None, data.image_shape)
    built = models.build_model(network.network, data.num_classes, data.image_shape, network.num_layers,
                               **network.options)
    models.initialize(built, initializer, generator)
    return built, models.model_spec(network.network, data.num_classes, data.image_shape, network.num_layers,
                                    **network.options)


def _pretrained(config: Config) -> tuple[torch.nn.Module, dict]:
    """model.pretrained_prefix's model and spec: a flow checkpoint, or an MXNet one (its magic says
    which), loaded into model.network for data.image_shape."""
    network = config.model
    prefix, epoch = network.pretrained_prefix, network.pretrained_epoch
    if mxnet_import.is_mxnet_checkpoint(prefix, epoch):
        return mxnet_import.import_model(prefix, epoch, network.network, config.data.image_shape,
                                         network.num_layers, network.options)
    spec = checkpoints.load_model_spec(prefix)
    pretrained = models.build_from_spec(spec)
    pretrained.load_state_dict(checkpoints.load_checkpoint(prefix, epoch)[0])
    return pretrained, spec


async def _training(config: Config, plan: _Plan, loss: Callable, event_send: trio.MemorySendChannel,
                    run: Run) -> None:
    """Publishes the plan's warnings, runs the training actors; then, with every other event out, the
    summary as the last event.

    A failing actor stops them all; the stream then ends with RunFailed, and the error waits in
    `run.error` for `run.wait()` and the end of `open_run`, so subscribers see the whole story.
    """
    with event_send, ExitStack() as actor_event_sends:
        def actor_event_send() -> trio.MemorySendChannel:
            # The bus ends once every clone is closed. An actor closes its own, but one that fails
            # before it gets that far (or never starts) cannot, so they are all closed here as well,
            # once every actor is done: else a failed run never ends.
            return actor_event_sends.enter_context(event_send.clone())

        for warning in plan.warnings:
            await event_send.send(warning)
        try:
            with run._training_scope:
                async with trio.open_nursery() as nursery:
                    fit_summary = await _start_actors(nursery, config, plan, loss, actor_event_send, run._stop_request)
        except Exception as error:
            run.error = run.error or first_cause(error)
            await event_send.send(RunFailed(type(run.error).__name__, str(run.error)))
            return
        if run.error is not None:  # a logger failed, and cancelled the actors
            await event_send.send(RunFailed(type(run.error).__name__, str(run.error)))
            return
        await event_send.send(fit_summary.receive_nowait())


async def _start_actors(nursery: trio.Nursery, config: Config, plan: _Plan, loss: Callable,
                        actor_event_send: Callable[[], trio.MemorySendChannel],
                        stop: trio.Event) -> trio.MemoryReceiveChannel:
    """Starts every training actor (each with its own `actor_event_send()`); returns where the fit
    loop's summary (RunFinished, or RunStopped once `stop` is set) will be.

    The devices and the server are ready (replicas built, optimizer made) before the fit loop
    starts, so the first epoch's clock does not count their start-up.
    """
    devices = config.train.devices
    server = len(devices) > 1 or plan.cluster.distributed  # else the one device updates itself (no kvstore)
    if server and config.train.precision == "fp16":
        raise ConfigError("train.precision: fp16 trains on one device only (its loss scale is the updater's)")
    updater_settings = builders.updater_settings(config.train)

    # The actors hand over their copies of the model's parameters, in the model's order: named here.
    names = [name for name, _ in plan.model.named_parameters()]

    def make_updater(parameters: list[torch.Tensor]) -> Updater:
        updater = Updater(zip(names, parameters, strict=True), updater_settings)
        if plan.updater_state is not None:
            updater.load_state_dict(plan.updater_state)
        return updater

    output_send, output_receive = trio.open_memory_channel(config.data.prefetch + 2)
    validation_send = validation_receive = None
    if plan.watch is not None:  # the fit loop waits for each validation's figures
        validation_send, validation_receive = trio.open_memory_channel(1)
    nursery.start_soon(metrics, builders.metric_settings(config), output_receive, actor_event_send(),
                       validation_send)
    save_send = None
    if plan.writes_files:
        save_send, save_receive = trio.open_memory_channel(1)
        nursery.start_soon(checkpoint, builders.checkpoint_settings(config.checkpoint), save_receive,
                           actor_event_send())

    server_send = server_reply_receive = None
    if server:
        server_send, server_receive = trio.open_memory_channel(0)
        server_reply_send, server_reply_receive = trio.open_memory_channel(1)
        weights = [p.detach() for p in plan.model.parameters()]
        await nursery.start(param_server, builders.server_settings(config.train), weights, make_updater,
                            server_receive, server_reply_send)

    settings = builders.fit_settings(config, server=server, begin_epoch=plan.begin_epoch,
                                     begin_update=plan.begin_update,
                                     num_parameters=sum(p.numel() for p in plan.model.parameters()),
                                     schedule=plan.schedule, model_spec=plan.model_spec,
                                     batches_per_epoch=plan.batches_per_epoch, begin_batch=plan.begin_batch,
                                     watch=plan.watch)
    # Sized so that neither the loop nor a device ever waits on the other to make room.
    in_flight = settings.steps_in_flight
    result_send, result_receive = trio.open_memory_channel(in_flight * len(devices))
    work_sends = []
    for replica in range(len(devices)):
        work_send, work_receive = trio.open_memory_channel(in_flight)
        work_sends.append(work_send)
        # Copying a big model takes a while: not on the Trio thread.
        replica_model = await trio.to_thread.run_sync(copy.deepcopy, plan.model) if replica else plan.model
        await nursery.start(compute, builders.compute_settings(config, replica, plan.decode_threads), replica_model,
                            loss, work_receive, result_send.clone(), None if server else make_updater,
                            plan.random_states[replica] if plan.random_states else None)
    result_send.close()

    # The loaders are stopped once the fit loop is done: an early stop or a stop request leaves them
    # with batches to send.
    data_scopes: list[trio.CancelScope] = []

    async def data_actor(actor: Callable, *args) -> None:
        with trio.CancelScope() as scope:
            data_scopes.append(scope)
            await actor(*args)

    epochs = config.train.num_epochs - plan.begin_epoch
    train_send, train_receive = trio.open_memory_channel(0 if plan.train_loader is not None else in_flight)
    if plan.train_loader is not None:
        nursery.start_soon(data_actor, loader_actor.loader, plan.train_loader, plan.train_records, train_send,
                           plan.begin_epoch, epochs, plan.begin_batch)
    else:
        nursery.start_soon(data_actor, feed, plan.train_data, train_send, plan.begin_epoch, epochs, plan.begin_batch)
    val_receive = None
    if plan.val_loader is not None or plan.val_data is not None:
        val_send, val_receive = trio.open_memory_channel(0)
        if plan.val_loader is not None:
            nursery.start_soon(data_actor, loader_actor.loader, plan.val_loader, plan.val_records, val_send,
                               plan.begin_epoch, epochs)
        else:
            nursery.start_soon(data_actor, feed, plan.val_data, val_send, plan.begin_epoch, epochs)

    channels = FitChannels(train_receive, val_receive, work_sends, result_receive, server_send,
                           server_reply_receive, output_send, save_send, actor_event_send(), stop=stop,
                           validations=validation_receive)
    summary_send, summary_receive = trio.open_memory_channel(1)

    async def fit_and_report() -> None:
        summary_send.send_nowait(await fit(settings, channels))
        for scope in data_scopes:  # started long before: the fit loop took their batches
            scope.cancel()

    nursery.start_soon(fit_and_report)
    return summary_receive
