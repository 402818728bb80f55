"""The compute actor: one per device, owns a model replica and runs forward_backward on its slice.

All torch work of a step (load the newest weights, forward, backward, and with a single device the
optimizer update too) is one worker-thread call, so the Trio side pays one hop per step. The
replica only reads the weights the fit loop hands it with each slice (`weights`); the parameter
server never touches the replica, and the protocol (no new slice before the previous update is
done) keeps the two from racing.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import trio

from flow import channels as hand_off
from flow.events import MonitorStatistics
from flow.errors import FlowError, NonFiniteLossError
from flow.metrics import create_metric
from flow.monitor import Monitor
from flow.optim import Updater
from flow.seeding import derive_seed
from flow.thread_budget import intra_op_threads
from flow.user_code import user_code_error


@dataclass(frozen=True)
class ComputeSettings:
    device: str
    replica: int
    precision: str  # "fp32", or "bf16" or "fp16" (autocast; fp16's loss scale is the updater's)
    seed: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB, for uint8 NHWC batches (data.layout "uint8_nhwc")
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    metrics: tuple[str, ...] = ("accuracy",)  # whose statistics each step computes (flow.metrics names)
    top_k: int = 0
    monitor: int = 0  # MXNet's Monitor every this many training batches, on replica 0 (flow/monitor.py); 0: off
    monitor_pattern: str = ".*"  # the names it watches (re.match)
    skip_nonfinite: bool = False  # a NaN/inf loss skips the step's update (else it ends the run)
    torch_threads: int = 0  # torch's intra-op threads for this replica's ops (0: as its thread has them)


@dataclass(frozen=True)
class TrainSlice:
    """One device's slice of a training batch: forward_backward (and the update, on a replica that owns the updater)."""

    epoch: int  # the replica's random draws are seeded per epoch
    data: torch.Tensor
    label: torch.Tensor
    samples: int  # real samples: the first rows (the rest are pads, in no loss and no metric)
    weight: torch.Tensor | None  # 1 per real sample, 0 per pad (None: no pads)
    scale: float  # 1 / real samples in the whole batch: the update averages over the global batch
    lr: float  # of this step's update, for a replica that owns the updater
    weights: list[torch.Tensor] | None  # newest master weights to load first (None: loaded already)
    batch: int = 0  # the batch's index in its epoch, for errors


@dataclass(frozen=True)
class EvalSlice:
    """One device's slice of a validation batch: forward only."""

    data: torch.Tensor
    label: torch.Tensor
    samples: int  # as TrainSlice's
    weights: list[torch.Tensor] | None  # as TrainSlice's
    epoch: int = 0  # for errors, as TrainSlice's batch
    batch: int = 0


@dataclass(frozen=True)
class PredictSlice:
    """One device's slice of a batch to predict (flow predict): forward only, its probabilities back."""

    data: torch.Tensor
    samples: int  # real samples: the first rows, whose probabilities come back (the rest are pads)


@dataclass(frozen=True)
class SnapshotRequest:
    """Asks for the replica's state (for a checkpoint); it comes back on `reply`, apart from the slices' results."""

    weights: list[torch.Tensor] | None  # as TrainSlice's
    reply: trio.MemorySendChannel  # of ReplicaState
    model: bool = True  # False: only the random state (of a replica whose weights are another's copy)


@dataclass(frozen=True)
class TrainResult:
    """`gradients` are for the parameter server: each summed over the slice's samples, None for a frozen
    parameter (requires_grad False); None in all when the replica updated itself."""

    replica: int
    statistics: tuple | None  # the metrics' statistics of the slice's real samples (None: it has none)
    gradients: list[torch.Tensor | None] | None
    nonfinite_loss: bool = False  # the loss was NaN or inf: no update was made, or is to be made
    monitor: MonitorStatistics | None = None  # on the batches the monitor watches


@dataclass(frozen=True)
class EvalResult:
    replica: int
    statistics: tuple | None  # as TrainResult's


@dataclass(frozen=True)
class PredictResult:
    replica: int
    probabilities: torch.Tensor  # float32 on the CPU, (samples, classes): softmax of the real samples' outputs


@dataclass(frozen=True)
class RandomState:
    """Where a replica's random draws stand: a run stopped mid-epoch resumes them from here."""

    epoch: int | None  # the epoch they were seeded for (None: no training step yet)
    generator: torch.Tensor  # the generator's state (torch.Generator.get_state())


@dataclass(frozen=True)
class ReplicaState:
    model: dict | None  # the model's state_dict, CPU copies (None: not asked for)
    updater: dict | None  # the updater's state_dict; None when the parameter server holds it
    random: RandomState | None = None


_UNMONITORED = contextlib.nullcontext()  # one for every batch the monitor skips: nothing to allocate


class _Replica:
    """The torch side of a compute actor; every method runs in the actor's worker thread."""

    def __init__(self, settings: ComputeSettings, model: torch.nn.Module, loss_fn: Callable,
                 make_updater: Callable[[list[torch.Tensor]], Updater] | None, random_state: RandomState | None):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.model = model.to(self.device)
        self.parameters = list(self.model.parameters())
        self.loss_fn = loss_fn
        self.updater = None if make_updater is None else make_updater(self.parameters)
        self.random = _ReplicaRandom(self.device)
        self.seeded_epoch = None
        if random_state is not None:  # a mid-epoch resume: the draws go on where they stopped
            self.random.state, self.seeded_epoch = random_state.generator, random_state.epoch
        # float32 mean and 1 / std, as the loader's normalize loop (flow/_pixels.c) takes them
        self.mean = torch.tensor(settings.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.inv_std = 1 / torch.tensor(settings.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # Each step's metric statistics are computed here, beside the outputs, so that only a few
        # numbers travel to the metric actor and the Trio thread does no array work a step.
        self.metric = create_metric(settings.metrics, settings.top_k)
        # As MXNet monitors its first executor; None when off, so that a step without it tests one attribute.
        self.monitor = (Monitor(self.model, settings.monitor, settings.monitor_pattern)
                        if settings.monitor and settings.replica == 0 else None)
        self.steps = {TrainSlice: self.train_step, EvalSlice: self.eval_step, PredictSlice: self.predict_step,
                      SnapshotRequest: self.snapshot}

    def autocast(self):
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.settings.precision == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def inputs(self, data: torch.Tensor) -> torch.Tensor:
        """A batch on the device as the model takes it: uint8 NHWC batches become float32 NCHW
        (x - mean) / std here, equal to the bit to the loader's float32 output, and 4x smaller to move."""
        data = data.to(self.device, non_blocking=True)
        if data.dtype != torch.uint8:
            return data
        images = data.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return images.sub_(self.mean).mul_(self.inv_std)

    @torch.no_grad()
    def load(self, weights: list[torch.Tensor] | None) -> None:
        if weights is not None:
            torch._foreach_copy_(self.parameters, [w.to(self.device, non_blocking=True) for w in weights])

    def train_step(self, work: TrainSlice) -> TrainResult:
        if self.seeded_epoch != work.epoch:  # seeded per epoch, so that a resumed run replays the draws
            self.random.seed(derive_seed(self.settings.seed, "compute", work.epoch, self.settings.replica))
            self.seeded_epoch = work.epoch
        self.load(work.weights)
        monitored = None if self.monitor is None else self.monitor.tic()
        if not self.model.training:
            self.model.train()
        data = self.inputs(work.data)
        label = work.label.to(self.device, non_blocking=True)
        for parameter in self.parameters:
            parameter.grad = None
        stage = "the model"  # whose code raised, for the error
        try:
            with self.autocast(), monitored or _UNMONITORED:  # the monitor's hooks record the outputs
                logits = self.model(data)
            stage = "the loss"
            loss = self.loss_fn(logits.float(), label)
            if work.weight is not None:
                loss = loss * work.weight.to(self.device, non_blocking=True)
            loss_sum = loss.sum()
            stage = "the model's backward"
            # fp16: times the loss scale, which the update divides out
            (loss_sum if self.updater is None else self.updater.scale_loss(loss_sum)).backward()
        except FlowError:  # flow's own error, met inside the user's code: already one line
            raise
        except (Exception, SystemExit) as error:  # SystemExit too: the model's exit() ends the run, not the process
            raise user_code_error(error, stage, f"training Epoch[{work.epoch}] Batch[{work.batch}]") from error
        # One number to the host a step (a GPU synchronizes here, as the metric statistics do anyway).
        finite = math.isfinite(loss_sum.item())
        if not finite and not self.settings.skip_nonfinite:
            raise NonFiniteLossError(f"the loss is {loss_sum.item()} in training Epoch[{work.epoch}] Batch[{work.batch}]; "
                                     f"stopped before its update (train.skip_nonfinite = true skips such updates)")
        if monitored is not None:
            monitored.record_gradients()
        statistics = self.statistics(work.label, logits.detach(), work.samples)
        if self.updater is not None:
            if finite:
                self.updater.step(work.scale, work.lr)
            monitor = None if monitored is None else monitored.toc()  # after the update: the new weights
            return TrainResult(self.settings.replica, statistics, None, not finite, monitor)
        gradients = [None if not p.requires_grad else p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self.parameters]
        monitor = None if monitored is None else monitored.toc()
        return TrainResult(self.settings.replica, statistics, gradients, not finite, monitor)

    @torch.no_grad()
    def eval_step(self, work: EvalSlice) -> EvalResult:
        self.load(work.weights)
        self.model.eval()
        data = self.inputs(work.data)
        try:
            with self.autocast():
                logits = self.model(data)
        except FlowError:
            raise
        except (Exception, SystemExit) as error:
            raise user_code_error(error, "the model", f"validation Epoch[{work.epoch}] Batch[{work.batch}]") from error
        return EvalResult(self.settings.replica, self.statistics(work.label, logits, work.samples))

    @torch.no_grad()
    def predict_step(self, work: PredictSlice) -> PredictResult:
        self.model.eval()
        with self.autocast():  # the whole slice, pads too: each row's outputs as eval_step computes them
            logits = self.model(self.inputs(work.data))
        probabilities = torch.softmax(logits[:work.samples].float(), dim=1)
        return PredictResult(self.settings.replica, probabilities.cpu())

    def statistics(self, label: torch.Tensor, logits: torch.Tensor, samples: int) -> tuple | None:
        """The metrics' statistics of the first `samples` rows, on the probabilities (what MXNet's
        metrics read: SoftmaxOutput's), float32 on the CPU."""
        if samples == 0:
            return None
        if samples < len(label):
            label, logits = label[:samples], logits[:samples]
        probabilities = torch.softmax(logits.float(), dim=1)
        return self.metric.statistics(label, probabilities if self.device.type == "cpu" else probabilities.cpu())

    @torch.no_grad()
    def snapshot(self, request: SnapshotRequest) -> ReplicaState:
        self.load(request.weights)
        random = RandomState(self.seeded_epoch, self.random.generator.get_state())  # runs while active: the live one
        if not request.model:
            return ReplicaState(None, None, random)
        model = {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.model.state_dict().items()}
        return ReplicaState(model, None if self.updater is None else self.updater.state_dict(), random)

    def run(self, messages: list) -> list:
        """Each message's answer, in order; the replica's random state is the live one meanwhile."""
        with self.random.active(), intra_op_threads(self.settings.torch_threads):
            return [self.steps[type(message)](message) for message in messages]


# torch has one CPU generator a process: the CPU replicas of every run take turns with it.
_CPU_GENERATOR_TURN = threading.Lock()


class _ReplicaRandom:
    """The random numbers a replica's training steps draw (dropout and friends), apart from the process's.

    torch's ops draw from its default generators (the CPU's, and one per GPU). Around each thread
    call (the steps it runs) this swaps the replica's own state in and the process's back, so that a run leaves the
    caller's torch RNG as it found it and a resumed run replays the same draws. A GPU replica
    owns its device's generator; CPU replicas share the CPU's, so they take turns.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.generator, self.turn = torch.cuda.default_generators[index], contextlib.nullcontext()
        else:
            self.generator, self.turn = torch.default_generator, _CPU_GENERATOR_TURN
        self.state = torch.Generator(device=device).get_state()  # replaced by seed() before any draw
        self.is_active = False

    def seed(self, seed: int) -> None:
        state = torch.Generator(device=self.device).manual_seed(seed).get_state()
        if self.is_active:
            self.generator.set_state(state)
        else:
            self.state = state

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.turn:
            saved = self.generator.get_state()
            self.generator.set_state(self.state)
            self.is_active = True
            try:
                yield
            finally:
                self.is_active = False
                self.state = self.generator.get_state()
                self.generator.set_state(saved)


async def compute(settings: ComputeSettings, model: torch.nn.Module, loss_fn: Callable,
                  work_channel: trio.MemoryReceiveChannel, result_channel: trio.MemorySendChannel,
                  make_updater: Callable[[list[torch.Tensor]], Updater] | None = None,
                  random_state: RandomState | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Runs each TrainSlice, EvalSlice, PredictSlice and SnapshotRequest it receives in this device's one
    worker thread, in order, and sends each slice's TrainResult, EvalResult or PredictResult on `result_channel`.

    Messages already queued when the thread is free go in the same thread call, in order.
    With `make_updater` (one device, no kvstore) the replica updates its own weights each step; without
    it, and fed no TrainSlice, no optimizer is built and `loss_fn` (None will do) is never called.
    `random_state`: where a stopped run's replica left its random draws (a mid-epoch resume).
    Reports started (for `nursery.start`) once the replica and its optimizer are built.
    """
    one_thread = trio.CapacityLimiter(1)  # one thread per device keeps CUDA streams simple
    replica = await trio.to_thread.run_sync(_Replica, settings, model, loss_fn, make_updater, random_state,
                                            limiter=one_thread)
    task_status.started()
    with work_channel, result_channel:  # sync close: an async one could let Cancelled hide our error
        async for message in work_channel:
            messages = [message]
            while True:
                try:
                    messages.append(work_channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            answers = await trio.to_thread.run_sync(replica.run, messages, limiter=one_thread)
            for message, answer in zip(messages, answers):
                if isinstance(message, SnapshotRequest):
                    await message.reply.send(answer)
                else:
                    await hand_off.send(result_channel, answer)
