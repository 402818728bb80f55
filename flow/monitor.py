"""MXNet's Monitor (python/mxnet/monitor.py) for a torch model: `train.monitor = N` and `train.monitor_pattern`.

Every N training batches (the run's first, N+1th, 2N+1th...: MXNet counts the batch from 1 when it
prints) it takes MXNet's default statistic, norm(x) / sqrt(x.size) in float32, of each tensor whose
name matches the pattern (`re.match`, so anchored at the start), in MXNet's order: the layers'
outputs as the forward pass makes them, then the gradients as the backward pass makes them (last
layer first), then the parameters, then the buffers (MXNet's auxiliary states). The console prints
them as MXNet's `Monitor.toc_print` does (each line ends in a tab, after the value):

    Batch:       1 conv1_output                   0.3051376
    Batch:       1 fc2.weight_grad                0.0041277
    Batch:       1 conv1.weight                   0.0712316

Names are torch's where MXNet's come from its symbol: a parameter or buffer is its `named_parameters`
/ `named_buffers` name (`fc1.weight`, MXNet's `fc1_weight`; `bn1.running_mean`, MXNet's
`bn1_moving_mean`), a gradient is its parameter's name + `_grad` (MXNet prints the backward ops'
outputs instead), and a layer's output is its module name + `_output` (`fc1_output`, as MXNet's;
`_output0`, `_output1`... for a layer that returns several tensors). The layers are the leaf modules
(those without children: MXNet's operators); integer buffers (BatchNorm's `num_batches_tracked`)
have no MXNet counterpart and are left out.

Only the first replica is watched (as MXNet watches its first executor), in its worker thread.
MXNet prints after the update: the parameters are the updated ones when the replica updates itself
(one device), the ones the step computed with when a parameter server updates them. The gradients
are sums over the replica's samples, as MXNet's are (its optimizer's rescale_grad averages them).
The output hooks exist only during a watched batch's forward pass, so that the other batches, and
a run without a monitor, pay nothing.
"""

from __future__ import annotations

import math
import re
import numpy
import torch

from flow.events import MonitorStatistics


def statistic(tensor: torch.Tensor) -> torch.Tensor:
    """MXNet Monitor's default `stat_func`, norm(x) / sqrt(x.size), as a float32 scalar on the tensor's device."""
    return torch.linalg.vector_norm(tensor.detach().float()) / math.sqrt(tensor.numel())


def monitor_line(batch: int, name: str, value: float) -> str:
    """MXNet's `Batch: {:7d} {:30s} {:s}` line: the value as str() of its float32, then a tab."""
    return "Batch: {:7d} {:30s} {:s}".format(batch, name, str(numpy.float32(value)) + "\t")


class Monitor:
    """Counts the training batches and watches those it is due to (MXNet's `tic`)."""

    def __init__(self, model: torch.nn.Module, interval: int, pattern: str = ".*"):
        self.interval = interval
        self.step = 0  # batches begun, as MXNet's Monitor.step
        self.matches = matches = re.compile(pattern).match
        self.layers = [(name, module) for name, module in model.named_modules() if next(module.children(), None) is None]
        named_parameters = list(model.named_parameters())
        self.gradients = [(name + "_grad", parameter) for name, parameter in reversed(named_parameters)
                          if parameter.requires_grad and matches(name + "_grad")]
        self.tensors = [(name, parameter) for name, parameter in named_parameters if matches(name)]
        self.tensors += [(name, buffer) for name, buffer in model.named_buffers()
                         if buffer.is_floating_point() and matches(name)]

    def tic(self) -> MonitoredBatch | None:
        """Call before each training batch's forward pass: the batch's recorder, or None when it is not watched."""
        watched = self.step % self.interval == 0
        self.step += 1
        return MonitoredBatch(self, self.step) if watched else None


class MonitoredBatch:
    """One watched batch's statistics. A context manager around the forward pass (its hooks record
    the outputs), then `record_gradients()` after backward, then `toc()` after the update."""

    def __init__(self, monitor: Monitor, batch: int):
        self.monitor = monitor
        self.batch = batch
        self.names: list[str] = []
        self.values: list[torch.Tensor] = []  # scalars on the device, fetched at once in toc()
        self.hooks: list = []

    def __enter__(self) -> MonitoredBatch:
        self.hooks = [module.register_forward_hook(self._output_hook(name)) for name, module in self.monitor.layers]
        return self

    def __exit__(self, *exc_info) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def _output_hook(self, layer: str):
        name = f"{layer}_output" if layer else "output"  # "": the model is one layer

        def record(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self._record(name, output)
            elif isinstance(output, (tuple, list)):
                for i, tensor in enumerate(output):
                    if isinstance(tensor, torch.Tensor):
                        self._record(f"{name}{i}", tensor)
        return record

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        if self.monitor.matches(name):
            self.names.append(name)
            self.values.append(statistic(tensor))

    def record_gradients(self) -> None:
        """After backward, before the update (which rescales the gradients in place)."""
        for name, parameter in self.monitor.gradients:
            if parameter.grad is not None:
                self.names.append(name)
                self.values.append(statistic(parameter.grad))

    def toc(self) -> MonitorStatistics:
        """After the update: the parameters' and buffers' statistics join the rest, all fetched in one copy."""
        for name, tensor in self.monitor.tensors:
            self.names.append(name)
            self.values.append(statistic(tensor))
        values = torch.stack(self.values).tolist() if self.values else []
        return MonitorStatistics(self.batch, list(zip(self.names, values)))
