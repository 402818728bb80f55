"""The compute actor: one per device, owns a model replica and runs forward_backward on its slice.

All torch work of a step (load the newest weights, forward, backward, and with a single device the
optimizer update too) is one worker-thread call, so the Trio side pays one hop per step. The
replica only reads the weights the fit loop hands it in `Work.weights`; the parameter server
never touches the replica, and the protocol (no new Work before the previous update is done)
keeps the two from racing.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import trio

from flow.optim import Updater
from flow.seeding import derive_seed


@dataclass(frozen=True)
class ComputeSettings:
    device: str
    replica: int
    precision: str  # "fp32" or "bf16" (autocast)
    seed: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB, for uint8 NHWC batches (data.layout "uint8_nhwc")
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Work:
    """One slice of a batch. kind: "train" (forward_backward), "eval" (forward), "snapshot" (state)."""

    kind: str
    epoch: int
    index: int
    data: torch.Tensor | None = None
    label: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # 1 per real sample, 0 per pad (None: no pads): pads count in no loss
    scale: float = 1.0  # 1 / real samples in the whole batch: the update averages over the global batch
    weights: list[torch.Tensor] | None = None  # newest master weights to load first (several replicas)


@dataclass(frozen=True)
class SliceResult:
    replica: int
    kind: str
    epoch: int
    index: int
    outputs: torch.Tensor | None = None  # probabilities, float32 on the CPU (what MXNet's metrics read)
    loss: float = 0.0  # summed over the real samples of the slice
    gradients: list[torch.Tensor | None] | None = None  # summed over samples (None: frozen); only for a server
    state: dict | None = None  # snapshot: model state_dict (CPU copies) and updater state


class _Replica:
    """The torch side of a compute actor; every method runs in the actor's worker thread."""

    def __init__(self, settings: ComputeSettings, model: torch.nn.Module, loss_fn: Callable,
                 make_updater: Callable[[list[torch.Tensor]], Updater] | None):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.model = model.to(self.device)
        self.parameters = list(self.model.parameters())
        self.loss_fn = loss_fn
        self.updater = None if make_updater is None else make_updater(self.parameters)
        self.random = _ReplicaRandom(self.device)
        self.seeded_epoch = None
        # float32 mean and 1 / std, as the loader's normalize loop (flow/_pixels.c) takes them
        self.mean = torch.tensor(settings.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.inv_std = 1 / torch.tensor(settings.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def autocast(self):
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
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

    def train_step(self, work: Work) -> SliceResult:
        if self.seeded_epoch != work.epoch:  # seeded per epoch, so that a resumed run replays the draws
            self.random.seed(derive_seed(self.settings.seed, "compute", work.epoch, self.settings.replica))
            self.seeded_epoch = work.epoch
        self.load(work.weights)
        if not self.model.training:
            self.model.train()
        data = self.inputs(work.data)
        label = work.label.to(self.device, non_blocking=True)
        for parameter in self.parameters:
            parameter.grad = None
        with self.random.active():
            with self.autocast():
                logits = self.model(data)
            loss = self.loss_fn(logits.float(), label)
            if work.weight is not None:
                loss = loss * work.weight.to(self.device, non_blocking=True)
            loss = loss.sum()
            loss.backward()
        outputs = torch.softmax(logits.detach().float(), dim=1).cpu()
        if self.updater is not None:
            self.updater.step(work.scale)
            return SliceResult(self.settings.replica, work.kind, work.epoch, work.index, outputs, loss.item())
        gradients = [None if not p.requires_grad else p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self.parameters]
        return SliceResult(self.settings.replica, work.kind, work.epoch, work.index, outputs, loss.item(), gradients)

    @torch.no_grad()
    def eval_step(self, work: Work) -> SliceResult:
        self.load(work.weights)
        self.model.eval()
        with self.autocast():
            logits = self.model(self.inputs(work.data))
        outputs = torch.softmax(logits.float(), dim=1).cpu()
        return SliceResult(self.settings.replica, work.kind, work.epoch, work.index, outputs)

    @torch.no_grad()
    def snapshot(self, work: Work) -> SliceResult:
        self.load(work.weights)
        state = {"model": {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.model.state_dict().items()}}
        if self.updater is not None:
            state["updater"] = self.updater.state_dict()
        return SliceResult(self.settings.replica, work.kind, work.epoch, work.index, state=state)

    def run(self, works: list[Work]) -> list[SliceResult]:
        steps = {"train": self.train_step, "eval": self.eval_step, "snapshot": self.snapshot}
        return [steps[work.kind](work) for work in works]


# torch has one CPU generator a process: the CPU replicas of every run take turns with it.
_CPU_GENERATOR_TURN = threading.Lock()


class _ReplicaRandom:
    """The random numbers a replica's training steps draw (dropout and friends), apart from the process's.

    torch's ops draw from its default generators (the CPU's, and one per GPU). Around each step
    this swaps the replica's own state in and the process's back, so that a run leaves the
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
        self.state: torch.Tensor | None = None

    def seed(self, seed: int) -> None:
        self.state = torch.Generator(device=self.device).manual_seed(seed).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.turn:
            saved = self.generator.get_state()
            self.generator.set_state(self.state)
            try:
                yield
            finally:
                self.state = self.generator.get_state()
                self.generator.set_state(saved)


async def compute(settings: ComputeSettings, model: torch.nn.Module, loss_fn: Callable,
                  work_channel: trio.MemoryReceiveChannel, result_channel: trio.MemorySendChannel,
                  make_updater: Callable[[list[torch.Tensor]], Updater] | None = None,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Runs the Work it receives in this device's one worker thread and sends each SliceResult on.

    Work that is already queued when the thread is free goes in the same thread call, in order.
    With `make_updater` (one device, no kvstore) the replica updates its own weights each step.
    Reports started (for `nursery.start`) once the replica and its optimizer are built.
    """
    one_thread = trio.CapacityLimiter(1)  # one thread per device keeps CUDA streams simple
    replica = await trio.to_thread.run_sync(_Replica, settings, model, loss_fn, make_updater, limiter=one_thread)
    task_status.started()
    with work_channel, result_channel:  # sync close: an async one could let Cancelled hide our error
        async for work in work_channel:
            works = [work]
            while True:
                try:
                    works.append(work_channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for result in await trio.to_thread.run_sync(replica.run, works, limiter=one_thread):
                await result_channel.send(result)
