"""One optimizer update, as MXNet 1.x's updater: average the summed gradients, clip, step.

Used by the parameter server (several replicas) and by the compute actor itself when there is one
device and no kvstore, as MXNet does (`_create_kvstore` gives no kvstore for one local device).

The optimizers are MXNet's (python/mxnet/optimizer/optimizer.py, 1.9.1), by fit.py's `--optimizer`
names: sgd, nag, adam, rmsprop, adagrad, adadelta. `torch_sgd` and `torch_adam` are torch.optim's
rules instead (lr outside the momentum buffer, weight decay on every parameter), as flow had them.

Weight decay follows MXNet's name rule: only parameters whose name ends in `weight` or `gamma` decay
(`wd_mult` 0 for the rest). Torch names a layer's parameters `weight` and `bias`, and BatchNorm's
scale (MXNet's gamma) `weight` and its shift (beta) `bias`, so convolution, linear and BatchNorm
weights decay and biases do not, as in MXNet. A custom model marks a parameter as not decaying by
its name (anything not ending in `weight` or `gamma`: `bias`, `beta`, `scale`, `offset`...), or the
config's `train.wd_mult` does it by pattern. `train.lr_mult`/`train.wd_mult` map glob patterns of
torch names (`fc.*`, `*.bias`) to multipliers; a later pattern wins over an earlier one, and wd_mult
over the name rule, as MXNet's `set_wd_mult` updates its dict.

Each update is a few `torch._foreach_*` calls per group of parameters that share (lr_mult,
wd_mult), so its cost does not grow with the number of parameters in Python calls.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from flow.errors import ConfigError
from flow.loss_scaling import LossScaler

MXNET_OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "adadelta")
TORCH_OPTIMIZERS = ("torch_sgd", "torch_adam")
OPTIMIZERS = MXNET_OPTIMIZERS + TORCH_OPTIMIZERS

# MXNet 1.9.1's defaults for what fit.py does not set.
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
RMSPROP_GAMMA1, RMSPROP_GAMMA2, RMSPROP_EPSILON = 0.9, 0.9, 1e-8
ADAGRAD_EPSILON = 1e-7
ADADELTA_RHO, ADADELTA_EPSILON = 0.9, 1e-5


@dataclass(frozen=True)
class UpdaterSettings:
    optimizer: str  # one of OPTIMIZERS
    lr: float  # torch_* only; every update sets the schedule's
    momentum: float  # sgd, nag and torch_sgd
    nesterov: bool  # torch_sgd only, with momentum (MXNet's Nesterov is the `nag` optimizer)
    weight_decay: float
    clip_gradient: float  # 0: no clipping
    lr_mult: Mapping[str, float] = field(default_factory=dict)  # glob pattern of names -> multiplier
    wd_mult: Mapping[str, float] = field(default_factory=dict)
    centered: bool = False  # rmsprop: MXNet's centered variant (Graves 2013)
    loss_scaling: bool = False  # fp16: a dynamic loss scale (flow/loss_scaling.py), one device only


def decays(name: str) -> bool:
    """MXNet's rule (Optimizer.set_wd_mult) on a torch name: only weights and gammas decay."""
    return name.endswith(("weight", "gamma"))


def multipliers(name: str, lr_mult: Mapping[str, float], wd_mult: Mapping[str, float]) -> tuple[float, float]:
    """(lr_mult, wd_mult) of the parameter `name`."""
    lr = 1.0
    wd = 1.0 if decays(name) else 0.0
    for pattern, value in lr_mult.items():
        if fnmatch.fnmatchcase(name, pattern):
            lr = value
    for pattern, value in wd_mult.items():
        if fnmatch.fnmatchcase(name, pattern):
            wd = value
    return lr, wd


def optimizer_problem(optimizer: str, nesterov: bool, lr_mult: Mapping, wd_mult: Mapping) -> tuple[str, str] | None:
    """(key, why) when these train keys do not go together, else None."""
    if optimizer not in OPTIMIZERS:
        return "optimizer", f"expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
    if nesterov and optimizer != "torch_sgd":
        return "nesterov", "is torch_sgd's; MXNet's Nesterov momentum is train.optimizer = \"nag\""
    for key, table in (("lr_mult", lr_mult), ("wd_mult", wd_mult)):
        if table and optimizer in TORCH_OPTIMIZERS:
            return key, f"is for MXNet's optimizers; {optimizer} applies torch's rules to every parameter"
        for pattern, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                return key, f"expected a finite non-negative number for {pattern!r}, got {value!r}"
    return None


def unmatched_pattern(names: Sequence[str], lr_mult: Mapping, wd_mult: Mapping) -> tuple[str, str] | None:
    """(key, pattern) of a multiplier pattern no parameter name matches (a typo, most likely)."""
    for key, table in (("lr_mult", lr_mult), ("wd_mult", wd_mult)):
        for pattern in table:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                return key, pattern
    return None


def check_resumable(state: dict, optimizer: str, source=None) -> None:
    """Refuses, with a ConfigError, a checkpoint's updater state that `optimizer` cannot go on from."""
    saved = state.get("rule")
    if saved is None:  # written before flow had MXNet's rules: torch.optim's state
        if optimizer not in TORCH_OPTIMIZERS:
            raise ConfigError(f"the checkpoint's optimizer state is torch.optim's (written before flow had "
                              f"MXNet's update rules): resume it with train.optimizer = \"torch_sgd\" "
                              f"(or \"torch_adam\"), not {optimizer!r}", source)
    elif saved != optimizer:
        raise ConfigError(f"the checkpoint was trained with train.optimizer = {saved!r}: resume it with "
                          f"that optimizer, not {optimizer!r}", source)


def _clip_(tensors: list[torch.Tensor], clip: float) -> None:
    """MXNet's clip_gradient: each element into [-clip, clip] (not the norm); 0: none."""
    if clip > 0:
        torch._foreach_clamp_min_(tensors, -clip)
        torch._foreach_clamp_max_(tensors, clip)


class _Rule:
    """An MXNet update over lists: `states[k]` is the k-th state tensor of each parameter.
    `grads` hold rescale * grad and may be overwritten."""

    def __init__(self, settings: UpdaterSettings):
        self.settings = settings
        self.clip = settings.clip_gradient

    def slots(self) -> int:
        """State tensors a parameter has (each starts at zero, as MXNet's create_state)."""
        return 0

    def update(self, weights, grads, states, lr: float, wd: float, count: int) -> None:
        raise NotImplementedError


class _SGD(_Rule):
    """sgd_update: w = (1 - lr*wd) w - lr clip(g); sgd_mom_update: m = mom m - lr wd w - lr clip(g); w += m."""

    def slots(self):
        return 1 if self.settings.momentum > 0 else 0

    def update(self, weights, grads, states, lr, wd, count):
        _clip_(grads, self.clip)
        if not states:
            if wd:
                torch._foreach_mul_(weights, 1 - lr * wd)
            torch._foreach_add_(weights, grads, alpha=-lr)
            return
        momentum, = states
        torch._foreach_mul_(momentum, self.settings.momentum)
        if wd:
            torch._foreach_add_(momentum, weights, alpha=-lr * wd)
        torch._foreach_add_(momentum, grads, alpha=-lr)
        torch._foreach_add_(weights, momentum)


class _NAG(_SGD):
    """nag_mom_update: g' = clip(g) + wd w; m = mom m - lr g'; w += mom m - lr g' (sgd_update without momentum)."""

    def update(self, weights, grads, states, lr, wd, count):
        if not states:
            return super().update(weights, grads, states, lr, wd, count)
        _clip_(grads, self.clip)
        if wd:
            torch._foreach_add_(grads, weights, alpha=wd)
        momentum, = states
        torch._foreach_mul_(momentum, self.settings.momentum)
        torch._foreach_add_(momentum, grads, alpha=-lr)
        torch._foreach_add_(weights, momentum, alpha=self.settings.momentum)
        torch._foreach_add_(weights, grads, alpha=-lr)


class _Adam(_Rule):
    """adam_update: g = clip(g + wd w); mean, var as usual; w -= lr_t mean / (sqrt(var) + eps), with the bias
    correction in lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t) (t: this parameter's updates)."""

    def slots(self):
        return 2

    def update(self, weights, grads, states, lr, wd, count):
        if wd:
            torch._foreach_add_(grads, weights, alpha=wd)
        _clip_(grads, self.clip)
        mean, var = states
        torch._foreach_mul_(mean, ADAM_BETA1)
        torch._foreach_add_(mean, grads, alpha=1 - ADAM_BETA1)
        torch._foreach_mul_(var, ADAM_BETA2)
        torch._foreach_addcmul_(var, grads, grads, value=1 - ADAM_BETA2)
        denominator = torch._foreach_sqrt(var)
        torch._foreach_add_(denominator, ADAM_EPSILON)
        lr_t = lr * math.sqrt(1 - ADAM_BETA2 ** count) / (1 - ADAM_BETA1 ** count)
        torch._foreach_addcdiv_(weights, mean, denominator, value=-lr_t)


class _RMSProp(_Rule):
    """rmsprop_update: g = clip(g + wd w); n = (1-g1) g^2 + g1 n; w -= lr g / sqrt(n + eps).
    rmspropalex_update (centered): also gbar = (1-g1) g + g1 gbar; delta = g2 delta - lr g / sqrt(n - gbar^2 + eps);
    w += delta."""

    def slots(self):
        return 3 if self.settings.centered else 1

    def update(self, weights, grads, states, lr, wd, count):
        if wd:
            torch._foreach_add_(grads, weights, alpha=wd)
        _clip_(grads, self.clip)
        n = states[0]
        torch._foreach_mul_(n, RMSPROP_GAMMA1)
        torch._foreach_addcmul_(n, grads, grads, value=1 - RMSPROP_GAMMA1)
        if not self.settings.centered:
            denominator = torch._foreach_add(n, RMSPROP_EPSILON)
            torch._foreach_sqrt_(denominator)
            torch._foreach_addcdiv_(weights, grads, denominator, value=-lr)
            return
        _, mean, delta = states
        torch._foreach_mul_(mean, RMSPROP_GAMMA1)
        torch._foreach_add_(mean, grads, alpha=1 - RMSPROP_GAMMA1)
        denominator = torch._foreach_addcmul(n, mean, mean, value=-1)
        torch._foreach_add_(denominator, RMSPROP_EPSILON)
        torch._foreach_sqrt_(denominator)
        torch._foreach_mul_(delta, RMSPROP_GAMMA2)
        torch._foreach_addcdiv_(delta, grads, denominator, value=-lr)
        torch._foreach_add_(weights, delta)


class _AdaGrad(_Rule):
    """AdaGrad.update (dense): g = clip(g); h += g^2; w -= lr (g / sqrt(h + eps) + wd w)."""

    def slots(self):
        return 1

    def update(self, weights, grads, states, lr, wd, count):
        _clip_(grads, self.clip)
        history, = states
        torch._foreach_addcmul_(history, grads, grads)
        denominator = torch._foreach_add(history, ADAGRAD_EPSILON)
        torch._foreach_sqrt_(denominator)
        step = torch._foreach_div(grads, denominator)
        if wd:
            torch._foreach_add_(step, weights, alpha=wd)
        torch._foreach_add_(weights, step, alpha=-lr)


class _AdaDelta(_Rule):
    """AdaDelta.update: g = clip(g); acc_g = rho acc_g + (1-rho) g^2; d = sqrt(acc_d + eps) / sqrt(acc_g + eps) g;
    acc_d = rho acc_d + (1-rho) d^2; w -= d + wd w. MXNet's AdaDelta takes no lr: the schedule has no effect."""

    def slots(self):
        return 2

    def update(self, weights, grads, states, lr, wd, count):
        _clip_(grads, self.clip)
        acc_g, acc_delta = states
        torch._foreach_mul_(acc_g, ADADELTA_RHO)
        torch._foreach_addcmul_(acc_g, grads, grads, value=1 - ADADELTA_RHO)
        delta = torch._foreach_add(acc_delta, ADADELTA_EPSILON)
        torch._foreach_sqrt_(delta)
        denominator = torch._foreach_add(acc_g, ADADELTA_EPSILON)
        torch._foreach_sqrt_(denominator)
        torch._foreach_div_(delta, denominator)
        torch._foreach_mul_(delta, grads)
        torch._foreach_mul_(acc_delta, ADADELTA_RHO)
        torch._foreach_addcmul_(acc_delta, delta, delta, value=1 - ADADELTA_RHO)
        if wd:
            torch._foreach_add_(delta, weights, alpha=wd)
        torch._foreach_sub_(weights, delta)


RULES = {"sgd": _SGD, "nag": _NAG, "adam": _Adam, "rmsprop": _RMSProp, "adagrad": _AdaGrad, "adadelta": _AdaDelta}


@dataclass
class _Group:
    """Parameters that share (lr_mult, wd_mult): one foreach update."""

    lr_mult: float
    wd_mult: float
    names: list[str]
    weights: list[torch.Tensor]
    states: list[list[torch.Tensor]]  # states[k][i]: the k-th state tensor of weights[i]


class Updater:
    """Owns the optimizer state of `named_parameters` ((name, tensor) pairs, as `named_parameters()`
    gives them). The fit loop counts the updates and hands each its lr.

    A parameter whose `.grad` is None in a step (frozen) is left alone, weight decay included. MXNet
    counts Adam's t per parameter; here it is the updater's count of steps, the same for every
    parameter that takes part in each step.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], settings: UpdaterSettings):
        named = list(named_parameters)
        self.names = [name for name, _ in named]
        self.parameters = [parameter for _, parameter in named]
        self.settings = settings
        self.updates = 0
        self.loss_scaler = (LossScaler(self.parameters, self.parameters[0].device.type)
                            if settings.loss_scaling else None)
        if settings.optimizer in TORCH_OPTIMIZERS:
            self.torch_optimizer = _torch_optimizer(self.parameters, settings)
            return
        self.rule = RULES[settings.optimizer](settings)
        by_multipliers: dict[tuple[float, float], _Group] = {}
        for name, parameter in named:
            key = multipliers(name, settings.lr_mult, settings.wd_mult)
            group = by_multipliers.setdefault(key, _Group(*key, [], [], [[] for _ in range(self.rule.slots())]))
            group.names.append(name)
            group.weights.append(parameter)
            for slot in group.states:
                slot.append(torch.zeros_like(parameter, memory_format=torch.preserve_format))
        self.groups = list(by_multipliers.values())

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: times the loss scale with loss_scaling, else itself."""
        return loss if self.loss_scaler is None else self.loss_scaler.scale(loss)

    @torch.no_grad()
    def step(self, scale: float, lr: float) -> None:
        """Updates the parameters from their `.grad`, which hold sums over samples; `scale` = 1 / samples
        (MXNet's rescale_grad). With loss_scaling the gradients are unscaled first, and a step whose
        gradients are not all finite is skipped (not counted, no state changes) and the scale shrinks."""
        if self.loss_scaler is not None:
            self.loss_scaler.step(lambda: self._step(scale, lr))
        else:
            self._step(scale, lr)

    def _step(self, scale: float, lr: float) -> None:
        gradients = [p.grad for p in self.parameters if p.grad is not None]
        torch._foreach_mul_(gradients, scale)
        self.updates += 1
        if self.settings.optimizer in TORCH_OPTIMIZERS:
            _clip_(gradients, self.settings.clip_gradient)
            for group in self.torch_optimizer.param_groups:
                group["lr"] = lr
            self.torch_optimizer.step()
            return
        for group in self.groups:
            weights, states = group.weights, group.states
            grads = [w.grad for w in weights]
            if any(g is None for g in grads):  # frozen parameters: not updated
                kept = [i for i, g in enumerate(grads) if g is not None]
                if not kept:
                    continue
                weights, grads = [weights[i] for i in kept], [grads[i] for i in kept]
                states = [[slot[i] for i in kept] for slot in states]
            self.rule.update(weights, grads, states, lr * group.lr_mult, self.settings.weight_decay * group.wd_mult,
                             self.updates)

    def state_dict(self) -> dict:
        """A copy (the live state changes in place at the next step), with the rule's name, so that a
        resume with another optimizer is refused."""
        if self.settings.optimizer in TORCH_OPTIMIZERS:
            state = {"rule": self.settings.optimizer, "optimizer": copy.deepcopy(self.torch_optimizer.state_dict())}
        else:
            states = {name: [slot[i].detach().clone() for slot in group.states]
                      for group in self.groups for i, name in enumerate(group.names)}
            state = {"rule": self.settings.optimizer, "updates": self.updates, "states": states}
        if self.loss_scaler is not None:
            state["loss_scale"] = self.loss_scaler.state_dict()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self.settings.optimizer)
        if self.loss_scaler is not None and "loss_scale" in state:  # else (an fp32 run's) the scale starts afresh
            self.loss_scaler.load_state_dict(state["loss_scale"])
        if self.settings.optimizer in TORCH_OPTIMIZERS:
            self.torch_optimizer.load_state_dict(state["optimizer"])
            return
        saved = state["states"]
        for group in self.groups:
            for i, name in enumerate(group.names):
                if name not in saved or len(saved[name]) != len(group.states):
                    raise ConfigError(f"the checkpoint's optimizer state has no {self.settings.optimizer} "
                                      f"state for parameter {name!r}")
                for slot, tensor in zip(group.states, saved[name]):
                    slot[i].copy_(tensor)
        self.updates = state["updates"]


def _torch_optimizer(parameters: list[torch.Tensor], settings: UpdaterSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "torch_sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay,
                               nesterov=settings.nesterov and settings.momentum > 0)
    return torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
