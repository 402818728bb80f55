"""Learning-rate schedules as MXNet 1.9.1's python/mxnet/lr_scheduler.py, set up the way
example/image-classification/common/fit.py sets them up, but as pure functions of one count.

`num_update` counts optimizer updates from the start of training (epoch 0). MXNet's optimizer
adds 1 to its count before asking the scheduler, so the n-th update (n from 1) uses `lr_at(n)`.
A schedule holds no count: the fit loop counts, so a run resumed at epoch b goes on from the
checkpoint's count, `epoch_size * b`.

fit.py instead restarts MXNet's count at 0 on resume and shifts the steps to `epoch_size * (e - b)`,
starting from an lr with the steps at or before b already applied. For the multi-factor schedule
that gives the same lr for every update, so flow keeps one count. It also keeps the warmup from
repeating and the cosine curve from restarting on resume, which MXNet's restarted count would do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flow.errors import ConfigError

SCHEDULES = ("multifactor", "factor", "pow", "cosine")
WARMUP_MODES = ("linear", "constant")


def change_line(num_update: int, lr: float) -> str:
    """MXNet's (Factor/MultiFactorScheduler) line when a step changes the lr."""
    return "Update[%d]: Change learning rate to %0.5e" % (num_update, lr)


def adjust_line(lr: float, epoch: int) -> str:
    """fit.py's line on resume, when steps already passed lower the starting lr."""
    return "Adjust learning rate to %e for epoch %d" % (lr, epoch)


def updates_per_epoch(num_examples: int, batch_size: int, num_workers: int = 1) -> int:
    """Updates per epoch, as fit.py's get_epoch_size (1.9.1): ceil(int(num_examples / num_workers) / batch_size).

    Rounded up because the last, partial batch is padded and trained on; older fit.py (the seed's)
    used num_examples / batch_size unrounded. num_workers > 1 only for a dist kvstore.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size), ("num_workers", num_workers)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return -(-(num_examples // num_workers) // batch_size)


class LRSchedule:
    """The lr of each update: a warmup from `warmup_begin_lr` over the first `warmup_steps` updates
    (MXNet's LRScheduler.get_warmup_lr: `linear` to base_lr, or `constant` at warmup_begin_lr), then
    the subclass's decay."""

    logs_steps = False  # whether MXNet's scheduler logs change_line at each step (Factor, MultiFactor)

    def __init__(self, base_lr: float, warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
                 warmup_mode: str = "linear"):
        if not base_lr > 0:
            raise ConfigError(f"lr: expected a positive float, got {base_lr!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"warmup_steps: expected a non-negative integer, got {warmup_steps!r}")
        if not 0 <= warmup_begin_lr <= base_lr:
            raise ConfigError(f"warmup_begin_lr: expected a float in [0, lr={base_lr}], got {warmup_begin_lr!r}")
        if warmup_mode not in WARMUP_MODES:
            raise ConfigError(f"warmup_mode: expected one of {', '.join(WARMUP_MODES)}, got {warmup_mode!r}")
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = warmup_begin_lr
        self.warmup_mode = warmup_mode

    def lr_at(self, num_update: int) -> float:
        """The lr the `num_update`-th update uses."""
        if num_update < self.warmup_steps:
            if self.warmup_mode == "constant":
                return self.warmup_begin_lr
            # MXNet's linear warmup: update n < warmup_steps gets begin + (base - begin) * n / warmup_steps.
            return self.warmup_begin_lr + (self.base_lr - self.warmup_begin_lr) * num_update / self.warmup_steps
        return self._after_warmup(num_update)

    def changes_at(self, num_update: int) -> bool:
        """Whether update `num_update` is where a step changes the lr (after warmup): where MXNet's
        stepping schedulers log change_line. The others (warmup, pow, cosine) log nothing."""
        return (self.logs_steps and num_update > max(self.warmup_steps, 1)
                and self.lr_at(num_update) != self.lr_at(num_update - 1))

    def resumed_lr(self, num_update: int) -> float | None:
        """The lowered lr fit.py logs (adjust_line) on a resume after `num_update` updates; None when it logs nothing."""
        return None

    def _after_warmup(self, num_update: int) -> float:
        raise NotImplementedError


class ConstantSchedule(LRSchedule):
    """One lr throughout (after any warmup): fit.py's case of no scheduler."""

    def _after_warmup(self, num_update: int) -> float:
        return self.base_lr


class MultiFactorSchedule(LRSchedule):
    """MXNet's MultiFactorScheduler: lr is multiplied by `factor` once for each step s with
    num_update > s, so the s-th update still uses the old lr and update s + 1 the new one."""

    logs_steps = True

    def __init__(self, base_lr: float, steps: Sequence[int], factor: float,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0, warmup_mode: str = "linear"):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        steps = list(steps)
        if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
            raise ConfigError(f"lr steps: expected a non-empty list of positive update counts, got {steps!r}")
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ConfigError(f"lr steps: expected an increasing list, got {steps!r}")
        if not 0 < factor <= 1:
            raise ConfigError(f"lr_factor: expected a float in (0, 1], got {factor!r}")
        self.steps = steps
        self.factor = factor

    def _after_warmup(self, num_update: int) -> float:
        lr = self.base_lr
        for step in self.steps:  # one multiplication per step, in order, as MXNet (same rounding)
            if num_update <= step:
                break
            lr *= self.factor
        return lr

    def resumed_lr(self, num_update):
        # fit.py starts a resumed run at lr times lr_factor for each step already passed, and says so.
        lr = self._after_warmup(num_update + 1)
        return lr if lr != self.base_lr else None


class FactorSchedule(LRSchedule):
    """MXNet's FactorScheduler: lr times `factor` every `step` updates (update k * step + 1 takes the
    k-th), not below `stop_factor_lr`."""

    logs_steps = True

    def __init__(self, base_lr: float, step: int, factor: float, stop_factor_lr: float = 1e-8,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0, warmup_mode: str = "linear"):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        if not isinstance(step, int) or step < 1:
            raise ConfigError(f"factor step: expected a positive number of updates, got {step!r}")
        if not 0 < factor <= 1:
            raise ConfigError(f"lr_factor: expected a float in (0, 1], got {factor!r}")
        self.step = step
        self.factor = factor
        self.stop_factor_lr = stop_factor_lr

    def _after_warmup(self, num_update: int) -> float:
        lr = self.base_lr
        for _ in range(max(num_update - 1, 0) // self.step):  # one multiplication per step, as MXNet
            lr *= self.factor
            if lr < self.stop_factor_lr:
                return self.stop_factor_lr
        return lr


class PolySchedule(LRSchedule):
    """MXNet's PolyScheduler: final_lr + (base_lr - final_lr) (1 - x)^pwr, x going from 0 to 1 between
    the end of warmup and `max_update`; final_lr after it."""

    def __init__(self, base_lr: float, max_update: int, pwr: float = 2.0, final_lr: float = 0.0,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0, warmup_mode: str = "linear"):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        if not isinstance(max_update, int) or max_update <= warmup_steps:
            raise ConfigError(f"pow max_update: expected an integer above warmup_steps ({warmup_steps}), got {max_update!r}")
        if not pwr > 0:
            raise ConfigError(f"lr_pwr: expected a positive float, got {pwr!r}")
        self.max_update = max_update
        self.pwr = pwr
        self.final_lr = final_lr

    def _after_warmup(self, num_update: int) -> float:
        if num_update > self.max_update:
            return self.final_lr
        progress = float(num_update - self.warmup_steps) / float(self.max_update - self.warmup_steps)
        return self.final_lr + (self.base_lr - self.final_lr) * pow(1 - progress, self.pwr)


class CosineSchedule(LRSchedule):
    """MXNet's CosineScheduler: from base_lr down to final_lr along half a cosine, between the end
    of warmup and `max_update`; final_lr after it."""

    def __init__(self, base_lr: float, max_update: int, final_lr: float = 0.0,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0, warmup_mode: str = "linear"):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        if not isinstance(max_update, int) or max_update <= warmup_steps:
            raise ConfigError(f"cosine max_update: expected an integer above warmup_steps ({warmup_steps}), got {max_update!r}")
        if not 0 <= final_lr <= base_lr:
            raise ConfigError(f"final_lr: expected a float in [0, lr={base_lr}], got {final_lr!r}")
        self.max_update = max_update
        self.final_lr = final_lr

    def _after_warmup(self, num_update: int) -> float:
        if num_update > self.max_update:
            return self.final_lr
        progress = (num_update - self.warmup_steps) / (self.max_update - self.warmup_steps)
        return self.final_lr + (self.base_lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2


def build_schedule(kind: str, lr: float, *, epoch_size: int, num_epochs: int | None = None,
                   lr_factor: float = 0.1, lr_step_epochs: Sequence[int] = (), lr_factor_epochs: int = 1,
                   lr_pwr: float = 2.0, warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
                   warmup_mode: str = "linear", final_lr: float = 0.0) -> LRSchedule:
    """The schedule fit.py's arguments describe.

    multifactor: lr times lr_factor at the start of each epoch in lr_step_epochs (a step at epoch e
      fires after epoch_size * e updates); constant when lr_factor >= 1 or there are no steps, as
      fit.py. Resuming past every step gives the fully reduced lr, where the seed's fit.py crashed.
    factor: lr times lr_factor every lr_factor_epochs epochs (MXNet's FactorScheduler).
    pow: fit.py's `--lr-step-epochs powN`: PolyScheduler(num_epochs * epoch_size, lr, pwr=N).
    cosine: from lr to final_lr over num_epochs * epoch_size updates.
    """
    if not isinstance(epoch_size, int) or epoch_size < 1:
        raise ConfigError(f"epoch_size: expected a positive integer, got {epoch_size!r}")
    warmup = {"warmup_steps": warmup_steps, "warmup_begin_lr": warmup_begin_lr, "warmup_mode": warmup_mode}
    if kind == "multifactor":
        if lr_factor >= 1 or not lr_step_epochs:
            return ConstantSchedule(lr, **warmup)
        if any(later <= earlier for earlier, later in zip(lr_step_epochs, lr_step_epochs[1:])):
            raise ConfigError(f"lr_step_epochs: expected increasing epochs, got {list(lr_step_epochs)}")
        steps = [epoch_size * epoch for epoch in lr_step_epochs]
        return MultiFactorSchedule(lr, steps, lr_factor, **warmup)
    if kind == "factor":
        return FactorSchedule(lr, epoch_size * lr_factor_epochs, lr_factor, **warmup)
    if kind in ("pow", "cosine"):
        if not isinstance(num_epochs, int) or num_epochs < 1:
            raise ConfigError(f"num_epochs: the {kind} schedule needs a positive integer, got {num_epochs!r}")
        if kind == "pow":
            return PolySchedule(lr, num_epochs * epoch_size, lr_pwr, final_lr, **warmup)
        return CosineSchedule(lr, num_epochs * epoch_size, final_lr, **warmup)
    raise ConfigError(f"unknown lr schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
