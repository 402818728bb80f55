"""The compute actor: one per device, owns a model replica and runs forward_backward on its slice.

All torch work of a step (load the newest weights, forward, backward, and with a single device the
optimizer update too) is one worker-thread call, so the Trio side pays one hop per step. The
replica only reads the weights the fit loop hands it with each slice (`weights`); the parameter
server never touches the replica, and the protocol (no new slice before the previous update is
done) keeps the two from racing.

A step reads nothing back from the device: it keeps its labels, probabilities and loss there, and
a slice marked `report` (the fit loop marks the ends of Speedometer windows and of epochs) moves
everything kept since the last one to the host in one transfer, checks the losses and computes each
step's metric statistics there. A GPU so synchronizes once a window, not once a step, and the fit
loop's steps stay queued ahead of it. What still reads each step: `skip_nonfinite` (the update
must be skipped before it is made), fp16 (the loss scale checks the gradients) and the monitor's batches.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
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
    channels_last: bool = False  # the model and its inputs in torch.channels_last (NHWC in memory)
    compile: bool = False  # torch.compile the model's forward (its first steps compile)
    torch_threads: int = 0  # torch's intra-op threads for this replica's ops (0: as its thread has them)
    cudnn_benchmark: bool = True  # a GPU replica lets cuDNN time its algorithms per shape (MXNet's autotune)


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
    batch: int = 0  # the batch's index in its epoch, for errors and in the statistics
    report: bool = True  # read the device back after this step: its result carries the statistics since the last one
    mirror: torch.Tensor | None = None  # bool per sample of a uint8 batch: flip it left to right (the loader's flags)


@dataclass(frozen=True)
class EvalSlice:
    """One device's slice of a validation batch: forward only."""

    data: torch.Tensor
    label: torch.Tensor
    samples: int  # as TrainSlice's
    weights: list[torch.Tensor] | None  # as TrainSlice's
    epoch: int = 0  # for errors, as TrainSlice's batch
    batch: int = 0
    report: bool = True  # as TrainSlice's
    mirror: torch.Tensor | None = None  # as TrainSlice's


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
    parameter (requires_grad False); None in all when the replica updated itself.

    `statistics`, of a `report` slice: for each step since the previous report (this one included)
    whose slice had real samples, in order, (its batch index, the metrics' statistics of those
    samples); empty when none had any. None for a slice that did not report."""

    replica: int
    statistics: tuple[tuple[int, tuple], ...] | None
    gradients: list[torch.Tensor | None] | None
    nonfinite_loss: bool = False  # a NaN or inf loss, seen at its step (skip_nonfinite): no update made, or to make
    monitor: MonitorStatistics | None = None  # on the batches the monitor watches
    # when the step ended (after its report's read-back, which waits for a GPU): Speedometer's clock
    finished: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class EvalResult:
    replica: int
    statistics: tuple[tuple[int, tuple], ...] | None  # as TrainResult's
    finished: float = field(default_factory=time.perf_counter)  # as TrainResult's


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


@dataclass(frozen=True)
class _Unreported:
    """A step's outputs kept on the device until the next report."""

    epoch: int
    batch: int
    label: torch.Tensor  # the real samples'
    probabilities: torch.Tensor  # float32 softmax of their outputs, what MXNet's metrics read
    loss: torch.Tensor | None  # the slice's loss sum, to check at the report (None: checked already, or validation)


def _on_host(device: torch.device) -> bool:
    """Whether a replica's outputs are in host memory already (nothing to read back)."""
    return device.type == "cpu"


def _to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` (on one device) on the host, made in one transfer: a GPU synchronizes once.
    Their bytes go end to end, each 8-byte aligned so that it views back as its own dtype."""
    pieces, starts, offset = [], [], 0
    for tensor in tensors:
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        starts.append(offset)
        pieces.append(raw)
        offset += raw.numel()
        if padding := -raw.numel() % 8:
            pieces.append(raw.new_zeros(padding))
            offset += padding
    if not tensors:
        return []
    host = torch.cat(pieces).cpu()
    return [host[start:start + tensor.numel() * tensor.element_size()].view(tensor.dtype).view(tensor.shape)
            for start, tensor in zip(starts, tensors)]


class _CopyStream:
    """A GPU replica's host-to-device copies, on a CUDA stream of their own: the batches queued behind a
    step cross PCIe while it computes. The host tensors stay referenced until their copy is done, as the
    loader reuses a pinned buffer once nobody holds it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.staged: dict[int, tuple[tuple, torch.cuda.Event]] = {}  # id(message) -> its device tensors, copied when
        self.in_transit: deque[tuple[torch.cuda.Event, tuple]] = deque()  # (copied when, the host tensors)

    def stage(self, message, host: tuple) -> None:
        with torch.cuda.stream(self.stream):
            copies = tuple(None if tensor is None else tensor.to(self.device, non_blocking=True) for tensor in host)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        self.staged[id(message)] = (copies, copied)
        self.release_copied()
        self.in_transit.append((copied, host))

    def take(self, message) -> tuple:
        """The message's tensors on the device, for the compute stream (which waits for their copy)."""
        copies, copied = self.staged.pop(id(message))
        compute_stream = torch.cuda.current_stream(self.device)
        compute_stream.wait_event(copied)
        for tensor in copies:
            if tensor is not None:  # allocated on the copy stream, used on the compute stream: not freed before
                tensor.record_stream(compute_stream)
        self.release_copied()
        return copies

    def release_copied(self) -> None:
        """Drops the host tensors whose copy is done (a query, not a wait)."""
        while self.in_transit and self.in_transit[0][0].query():
            self.in_transit.popleft()


def _host_tensors(message) -> tuple:
    """What a slice brings from the host: (data, label, weight, mirror), each None where it has none."""
    if isinstance(message, TrainSlice):
        return message.data, message.label, message.weight, message.mirror
    if isinstance(message, EvalSlice):
        return message.data, message.label, None, message.mirror
    return message.data, None, None, None


class _Replica:
    """The torch side of a compute actor; every method runs in the actor's worker thread."""

    def __init__(self, settings: ComputeSettings, model: torch.nn.Module, loss_fn: Callable,
                 make_updater: Callable[[list[torch.Tensor]], Updater] | None, random_state: RandomState | None):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        # The module itself: its parameters, state_dict names, train()/eval() and the monitor's hooks;
        # `forward` is what runs it (torch.compile's wrapper, with compile).
        self.model = (model.to(self.device, memory_format=torch.channels_last) if settings.channels_last
                      else model.to(self.device))
        self.forward = torch.compile(self.model) if settings.compile else self.model
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
        # Each step's metric statistics are computed here (at the report after it), so that only a few
        # numbers travel to the metric actor and the Trio thread does no array work a step.
        self.metric = create_metric(settings.metrics, settings.top_k)
        self.unreported: list[_Unreported] = []  # the steps since the last report
        # A NaN loss that is to skip its update, or fp16's scale (whose step reads the gradients' check
        # anyway), is seen at its step: one read a step (a GPU synchronizes there).
        self.check_loss_each_step = settings.skip_nonfinite or settings.precision == "fp16"
        self.copies = _CopyStream(self.device) if self.device.type == "cuda" else None
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

    def on_device(self, message) -> tuple:
        """The slice's (data, label, weight, mirror) on the device: staged on a GPU's copy stream, or moved now."""
        if self.copies is not None and id(message) in self.copies.staged:
            return self.copies.take(message)
        return tuple(None if tensor is None else tensor.to(self.device, non_blocking=True)
                     for tensor in _host_tensors(message))

    def inputs(self, data: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """A batch on the device as the model takes it. A uint8 NHWC batch (a quarter of float32's bytes
        to move) becomes float32 (x - mean) * (1 / std) here, NCHW or channels_last, each image whose
        `mirror` flag is set flipped left to right: equal to the bit to the loader's float32 output."""
        if data.dtype != torch.uint8:  # the loader's float32 NCHW (normalized, mirrored), or a custom source's
            return data.contiguous(memory_format=self.memory_format) if data.dim() == 4 else data
        images = data.permute(0, 3, 1, 2)  # NCHW sizes over NHWC memory: channels_last strides
        if mirror is not None:  # a select, not an index: nothing read back, so a GPU need not synchronize
            images = torch.where(mirror.view(-1, 1, 1, 1).bool(), images.flip(3), images)
        # (Under autocast the first layer casts to bf16/fp16 itself: one kernel either way.)
        images = images.to(torch.float32, memory_format=self.memory_format)
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
        data, label, weight, mirror = self.on_device(work)
        data = self.inputs(data, mirror)
        for parameter in self.parameters:
            parameter.grad = None
        stage = "the model"  # whose code raised, for the error
        try:
            with self.autocast(), monitored or _UNMONITORED:  # the monitor's hooks record the outputs
                logits = self.forward(data)
            stage = "the loss"
            loss = self.loss_fn(logits.float(), label)
            if weight is not None:
                loss = loss * weight
            loss_sum = loss.sum()
            stage = "the model's backward"
            # fp16: times the loss scale, which the update divides out
            (loss_sum if self.updater is None else self.updater.scale_loss(loss_sum)).backward()
        except FlowError:  # flow's own error, met inside the user's code: already one line
            raise
        except (Exception, SystemExit) as error:  # SystemExit too: the model's exit() ends the run, not the process
            raise user_code_error(error, stage, f"training Epoch[{work.epoch}] Batch[{work.batch}]") from error
        finite = True
        if self.check_loss_each_step:
            value = loss_sum.item()
            finite = math.isfinite(value)
            if not finite and not self.settings.skip_nonfinite:
                raise _nonfinite_loss(value, work.epoch, work.batch)
        if monitored is not None:
            monitored.record_gradients()
        self.keep(work.epoch, work.batch, label, logits.detach(), work.samples,
                  None if self.check_loss_each_step else loss_sum.detach())
        if self.updater is not None:
            if finite:
                self.updater.step(work.scale, work.lr)
            monitor = None if monitored is None else monitored.toc()  # after the update: the new weights
            return TrainResult(self.settings.replica, self.report() if work.report else None, None, not finite,
                               monitor)
        gradients = [None if not p.requires_grad else p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self.parameters]
        monitor = None if monitored is None else monitored.toc()
        return TrainResult(self.settings.replica, self.report() if work.report else None, gradients, not finite,
                           monitor)

    @torch.no_grad()
    def eval_step(self, work: EvalSlice) -> EvalResult:
        self.load(work.weights)
        self.model.eval()
        data, label, _, mirror = self.on_device(work)
        data = self.inputs(data, mirror)
        try:
            with self.autocast():
                logits = self.forward(data)
        except FlowError:
            raise
        except (Exception, SystemExit) as error:
            raise user_code_error(error, "the model", f"validation Epoch[{work.epoch}] Batch[{work.batch}]") from error
        self.keep(work.epoch, work.batch, label, logits, work.samples, None)
        return EvalResult(self.settings.replica, self.report() if work.report else None)

    @torch.no_grad()
    def predict_step(self, work: PredictSlice) -> PredictResult:
        self.model.eval()
        data = self.on_device(work)[0]
        with self.autocast():  # the whole slice, pads too: each row's outputs as eval_step computes them
            logits = self.forward(self.inputs(data))
        probabilities = torch.softmax(logits[:work.samples].float(), dim=1)
        return PredictResult(self.settings.replica, probabilities.cpu())

    def keep(self, epoch: int, batch: int, label: torch.Tensor, logits: torch.Tensor, samples: int,
             loss: torch.Tensor | None) -> None:
        """Keeps what the step's metric statistics and loss check need, on the device, till the next report:
        the first `samples` rows' labels and probabilities (what MXNet's metrics read: SoftmaxOutput's)."""
        if samples == 0 and loss is None:
            return
        if samples < len(label):
            label, logits = label[:samples], logits[:samples]
        self.unreported.append(_Unreported(epoch, batch, label, torch.softmax(logits.float(), dim=1), loss))

    def report(self) -> tuple[tuple[int, tuple], ...]:
        """Every kept step's (batch, metric statistics), in order, read back in one transfer; a NaN or inf
        loss among them ends the run (the updates after it in the window were made, none saved)."""
        steps, self.unreported = self.unreported, []
        kept = [tensor for step in steps
                for tensor in (step.label, step.probabilities, *(() if step.loss is None else (step.loss,)))]
        host = iter(kept if _on_host(self.device) else _to_host(kept))
        on_host = [(step, next(host), next(host), None if step.loss is None else next(host)) for step in steps]
        losses = [(step, loss) for step, _, _, loss in on_host if loss is not None]
        if losses and not torch.isfinite(torch.stack([loss for _, loss in losses])).all():
            step, loss = next((step, loss) for step, loss in losses if not math.isfinite(float(loss)))
            raise _nonfinite_loss(float(loss), step.epoch, step.batch)
        return tuple((step.batch, self.metric.statistics(label, probabilities))
                     for step, label, probabilities, _ in on_host if len(label))

    @torch.no_grad()
    def snapshot(self, request: SnapshotRequest) -> ReplicaState:
        self.load(request.weights)
        random = RandomState(self.seeded_epoch, self.random.generator.get_state())  # runs while active: the live one
        if not request.model:
            return ReplicaState(None, None, random)
        model = {name: tensor.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                 for name, tensor in self.model.state_dict().items()}
        return ReplicaState(model, None if self.updater is None else self.updater.state_dict(), random)

    def run(self, messages: list) -> list:
        """Each message's answer, in order; the replica's random state is the live one meanwhile. On a GPU
        every slice's host-to-device copy starts first, on the copy stream, beside the steps before it."""
        if self.copies is not None:
            for message in messages:
                if not isinstance(message, SnapshotRequest):
                    self.copies.stage(message, _host_tensors(message))
        with self.random.active(), intra_op_threads(self.settings.torch_threads), self.cudnn_autotune():
            return [self.steps[type(message)](message) for message in messages]

    @contextlib.contextmanager
    def cudnn_autotune(self) -> Iterator[None]:
        """cuDNN's benchmark mode on a GPU replica's calls (a process-wide flag: put back after each call)."""
        if self.device.type != "cuda":
            yield
            return
        found = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.settings.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = found


def _nonfinite_loss(value: float, epoch: int, batch: int) -> NonFiniteLossError:
    return NonFiniteLossError(f"the loss is {value} in training Epoch[{epoch}] Batch[{batch}] "
                              f"(train.skip_nonfinite = true skips such updates)")


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
