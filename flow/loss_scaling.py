"""fp16 training's dynamic loss scale: torch.amp.GradScaler's rule, around flow's updater.

With `train.precision = "fp16"` the forward runs under torch.autocast(float16) while the parameters
stay float32: the update reads float32 gradients and writes float32 weights, which is what MXNet's
`multi_precision` gets from its float32 master copy. fp16's small range is what needs the loss
scale: the loss is multiplied by it before backward, so that small gradients do not flush to zero,
and the gradients are divided by it again before the update. A step whose gradients hold inf or
NaN (the scale was too large) is skipped and the scale halved; after `growth_interval` finite steps
in a row it doubles (GradScaler's defaults).
"""

from __future__ import annotations

from typing import Callable

import torch

# flow backpropagates the sum of the slice's per-sample losses (the update divides by the batch, as
# MXNet's rescale_grad), so its weight gradients are batch-size times those of a mean loss: the
# scale starts at 2**10 rather than GradScaler's 2**16, which would overflow the first few steps.
INITIAL_SCALE = 2.0 ** 10


class _Gradients:
    """What GradScaler reads of an optimizer: the parameters whose .grad it unscales, and a step()
    it calls only when they are all finite."""

    def __init__(self, parameters: list[torch.Tensor]):
        self.param_groups = [{"params": parameters}]
        self.update: Callable[[], None] = lambda: None

    def step(self) -> bool:
        self.update()
        return True


class LossScaler:
    def __init__(self, parameters: list[torch.Tensor], device_type: str):
        self.grad_scaler = torch.amp.GradScaler(device_type, init_scale=INITIAL_SCALE)
        self.gradients = _Gradients(parameters)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.grad_scaler.scale(loss)

    def step(self, update: Callable[[], None]) -> bool:
        """Unscales the parameters' .grad in place and runs `update` if they are finite; then
        adjusts the scale. False when the step was skipped."""
        self.gradients.update = update
        applied = self.grad_scaler.step(self.gradients) is not None
        self.grad_scaler.update()
        return applied

    def get_scale(self) -> float:
        return self.grad_scaler.get_scale()

    def state_dict(self) -> dict:
        return self.grad_scaler.state_dict()  # plain floats and ints: loads with weights_only

    def load_state_dict(self, state: dict) -> None:
        self.grad_scaler.load_state_dict(state)
