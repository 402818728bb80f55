"""One optimizer update, as MXNet's updater: average the summed gradients, clip, set the lr, step.

Used by the parameter server (several replicas) and by the compute actor itself when there is one
device and no kvstore, as MXNet does (`_create_kvstore` gives no kvstore for one local device).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UpdaterSettings:
    optimizer: str  # "sgd" or "adam"
    lr: float  # the optimizer's own; every update sets the schedule's
    momentum: float  # sgd only
    nesterov: bool  # sgd only, with momentum
    weight_decay: float
    clip_gradient: float  # 0: no clipping


class Updater:
    """Owns an optimizer over `parameters`. The fit loop counts the updates and hands each its lr."""

    def __init__(self, parameters: list[torch.Tensor], settings: UpdaterSettings):
        self.parameters = list(parameters)
        self.clip_gradient = settings.clip_gradient
        if settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.parameters, lr=settings.lr, momentum=settings.momentum,
                                             weight_decay=settings.weight_decay,
                                             nesterov=settings.nesterov and settings.momentum > 0)
        else:
            self.optimizer = torch.optim.Adam(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay)

    def step(self, scale: float, lr: float) -> None:
        """Updates the parameters from their `.grad`, which hold sums over samples; `scale` = 1 / samples."""
        gradients = [p.grad for p in self.parameters if p.grad is not None]
        torch._foreach_mul_(gradients, scale)
        if self.clip_gradient > 0:
            # MXNet's clip_gradient clips each element to [-c, c], not the norm.
            torch._foreach_clamp_min_(gradients, -self.clip_gradient)
            torch._foreach_clamp_max_(gradients, self.clip_gradient)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def state_dict(self) -> dict:
        """A copy: torch's own shares the live momentum tensors, which the next step changes in place."""
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
