"""The parameter-server actor: MXNet's kvstore for several replicas.

It owns the master weights and the optimizer state. Each step it sums the replicas' gradients
(`local`: on the CPU; `device`: on the first device), runs one optimizer update, and hands back
the new master weights, which the fit loop passes to every replica with its next slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import trio

from flow.errors import DistributedError
from flow.optim import Updater


@dataclass(frozen=True)
class ServerSettings:
    kv_store: str  # "local", "device", "dist_sync" or "dist_device_sync"
    devices: tuple[str, ...]

    @property
    def master_device(self) -> torch.device:
        return torch.device("cpu" if self.kv_store in ("local", "dist_sync") else self.devices[0])

    @property
    def distributed(self) -> bool:
        return self.kv_store.startswith("dist")


@dataclass(frozen=True)
class Update:
    """The gradients of one step, one list per replica, each summed over that replica's samples
    (None for a frozen parameter: requires_grad False on the replica)."""

    num_update: int  # which update this is, counted from the start of training
    lr: float
    gradients: list[list[torch.Tensor | None]]
    samples: int  # real samples in this process's batch
    nonfinite_loss: bool = False  # a replica's loss was NaN or inf: skip the update (in every process)


@dataclass(frozen=True)
class Updated:
    """The answer to an Update."""

    weights: list[torch.Tensor]  # the master weights; replicas copy them, nobody writes them
    skipped: bool = False  # no update was made: a loss of this process's replicas, or another's, was NaN or inf


@dataclass(frozen=True)
class StateRequest:
    """Asks for the updater's state_dict (for a checkpoint); it comes back on `reply`, apart from Updated."""

    reply: trio.MemorySendChannel  # of the state dict


class _Server:
    """The torch side; every method runs in the server's worker thread."""

    def __init__(self, settings: ServerSettings, initial_weights: list[torch.Tensor],
                 make_updater: Callable[[list[torch.Tensor]], Updater]):
        device = settings.master_device
        self.weights = [w.detach().to(device, copy=True) for w in initial_weights]
        self.updater = make_updater(self.weights)
        self.device = device
        self.distributed = settings.distributed

    def update(self, message: Update) -> Updated:
        trainable = []
        for position, weight in enumerate(self.weights):
            if message.gradients[0][position] is None:
                continue  # frozen: no gradient, so torch's optimizers skip it, weight decay included
            total = message.gradients[0][position].to(self.device, copy=True)
            for replica_gradients in message.gradients[1:]:
                total.add_(replica_gradients[position].to(self.device))
            weight.grad = total
            trainable.append(weight)
        samples, skip = message.samples, message.nonfinite_loss
        if self.distributed:
            samples, skip = self._sum_over_processes(message.num_update, [w.grad for w in trainable], samples, skip)
        if not skip:
            self.updater.step(1.0 / samples, message.lr)
        return Updated([w.detach() for w in self.weights], skip)

    def _sum_over_processes(self, num_update: int, gradients: list[torch.Tensor], samples: int,
                            skip: bool) -> tuple[int, bool]:
        """Sums the gradients (in place), the sample counts and the skip votes of every process: one
        all_reduce a step. Any process's vote skips the update in all, so that they stay equal."""
        counts = torch.tensor([float(samples), float(skip)], device=self.device)
        flat = torch.cat([g.reshape(-1) for g in gradients] + [counts])
        try:
            torch.distributed.all_reduce(flat)
        except RuntimeError as error:  # gloo / NCCL: a peer crashed, exited or timed out
            raise DistributedError(f"update {num_update}: the gradient all_reduce failed, so another process "
                                   f"of the job{_peer()} stopped or hangs ({_reason(error)})") from None
        offset = 0
        for gradient in gradients:
            gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
            offset += gradient.numel()
        total_samples, skips = flat[-2:].tolist()
        return int(total_samples), skips > 0


async def param_server(settings: ServerSettings, initial_weights: list[torch.Tensor],
                       make_updater: Callable[[list[torch.Tensor]], Updater],
                       request_channel: trio.MemoryReceiveChannel, reply_channel: trio.MemorySendChannel,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answers each Update with Updated on `reply_channel`, and each StateRequest on its own reply, in order;
    started once its optimizer is built."""
    one_thread = trio.CapacityLimiter(1)
    server = await trio.to_thread.run_sync(_Server, settings, initial_weights, make_updater, limiter=one_thread)
    task_status.started()
    with request_channel, reply_channel:  # sync close: an async one could let Cancelled hide our error
        async for request in request_channel:
            if isinstance(request, Update):
                await reply_channel.send(await trio.to_thread.run_sync(server.update, request, limiter=one_thread))
            else:
                state = await trio.to_thread.run_sync(server.updater.state_dict, limiter=one_thread)
                await request.reply.send(state)


def _peer() -> str:
    """The other process's rank, when there is only one other (the backends do not say which one failed)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() != 2:
        return ""
    return f" (rank {1 - torch.distributed.get_rank()})"


def _reason(error: RuntimeError) -> str:
    """A backend error's first sentence, without its source location: gloo's
    "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:18605. This is typically ..." """
    first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0]
