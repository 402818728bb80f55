"""Evaluation metrics with MXNet 1.9.1's semantics (python/mxnet/metric.py), and the log lines
fit.py prints with them (python/mxnet/callback.py's Speedometer, module/base_module.py's fit).

Every metric keeps two accumulators. `update` adds to both; the local one is what Speedometer
reports and clears after each report (`reset_local`, its auto_reset); the global one is the epoch
figure (`Epoch[n] Train-accuracy=...`), cleared by `reset` at the start of each epoch. A value
with nothing accumulated is NaN, as in MXNet.

`update(labels, outputs)` takes one array or a list of them (one per network output), as numpy
arrays or torch tensors. Outputs are what MXNet's SoftmaxOutput gives: class probabilities, so
flow passes softmax(logits); `ce` needs them to be probabilities, accuracy and top-k only rank them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flow.errors import ConfigError

NameValues = list[tuple[str, float]]


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bfloat16:  # numpy has no bfloat16
            array = array.float()
        return array.numpy(force=True)  # detach, cpu and numpy in one torch call
    return np.asarray(array)


def _as_list(arrays: Any) -> list[np.ndarray]:
    if isinstance(arrays, (list, tuple)):
        return [_as_numpy(array) for array in arrays]
    return [_as_numpy(arrays)]


def _arrays(name: str, labels: Any, outputs: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Labels and outputs as lists of numpy arrays, one pair per network output."""
    labels, outputs = _as_list(labels), _as_list(outputs)
    if len(labels) != len(outputs):
        raise ValueError(f"metric {name}: {len(labels)} label arrays but {len(outputs)} outputs")
    return labels, outputs


def _mean(total: float, count: float) -> float:
    return total / count if count else math.nan


class EvalMetric:
    """One metric: a (sum, count) pair kept twice, locally and globally; the value is sum / count."""

    def __init__(self, name: str):
        self.name = name
        self.reset()

    def update(self, labels: Any, outputs: Any) -> None:
        self.add(self.statistics(labels, outputs))

    def statistics(self, labels: Any, outputs: Any) -> tuple[float, float]:
        """What one update adds, as (sum, count), without adding it: computed where the outputs are
        (flow's compute actors), added by whoever keeps the figures (the metric actor)."""
        return self._statistics(*_arrays(self.name, labels, outputs))

    def add(self, statistics: tuple[float, float]) -> None:
        total, count = statistics
        self.sum_metric += total
        self.num_inst += count
        self.global_sum_metric += total
        self.global_num_inst += count

    def _statistics(self, labels: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float]:
        """The (sum, count) one update adds: by default the sums over each (label, output) pair."""
        if len(labels) == 1:  # the common case, every step: no loop
            return self._pair_statistics(labels[0], outputs[0])
        total, count = 0.0, 0
        for label, output in zip(labels, outputs):
            pair_total, pair_count = self._pair_statistics(label, output)
            total += pair_total
            count += pair_count
        return total, count

    def _pair_statistics(self, label: np.ndarray, output: np.ndarray) -> tuple[float, float]:
        raise NotImplementedError

    def reset_local(self) -> None:
        self.sum_metric = 0.0
        self.num_inst = 0

    def reset(self) -> None:
        self.reset_local()
        self.global_sum_metric = 0.0
        self.global_num_inst = 0

    def get(self) -> NameValues:
        """The local value(s) as (name, value) pairs (MXNet's get_name_value)."""
        return [(self.name, _mean(self.sum_metric, self.num_inst))]

    def get_global(self) -> NameValues:
        """The global value(s) as (name, value) pairs (MXNet's get_global_name_value)."""
        return [(self.name, _mean(self.global_sum_metric, self.global_num_inst))]


def _check_same_size(name: str, label: np.ndarray, predicted: np.ndarray) -> None:
    if label.size != predicted.size:
        raise ValueError(f"metric {name}: {label.size} labels but {predicted.size} predictions")


class Accuracy(EvalMetric):
    """Share of samples whose highest-scoring class is the label (labels cast to int32, as MXNet)."""

    def __init__(self):
        super().__init__("accuracy")

    def _pair_statistics(self, label, output):
        # MXNet takes argmax over axis 1 unless the output already holds class indices.
        # (Indices from argmax compare with int32 labels as the int32 cast of them would.)
        predicted = output.argmax(axis=1) if output.shape != label.shape else output.astype(np.int32)
        predicted = predicted.ravel()
        label = label.astype(np.int32).ravel()
        _check_same_size(self.name, label, predicted)
        return int((predicted == label).sum()), predicted.size


class TopKAccuracy(EvalMetric):
    """Share of samples whose label is among the `top_k` highest-scoring classes."""

    def __init__(self, top_k: int):
        if not isinstance(top_k, int) or top_k < 2:
            raise ConfigError(f"top_k: top_k_accuracy needs top_k >= 2 (1 is plain accuracy), got {top_k!r}")
        super().__init__(f"top_k_accuracy_{top_k}")
        self.top_k = top_k

    def _pair_statistics(self, label, output):
        if output.ndim != 2:
            raise ValueError(f"metric {self.name}: expected (batch, classes) outputs, got shape {output.shape}")
        num_classes = output.shape[1]
        top_k = min(self.top_k, num_classes)  # MXNet's argpartition fails past num_classes; all classes count
        # MXNet's own call: argpartition of float32 scores, the last top_k columns are the top k.
        ranked = np.argpartition(output.astype(np.float32), -top_k, axis=1)[:, num_classes - top_k:]
        label = label.astype(np.int32).ravel()
        _check_same_size(self.name, label, ranked[:, 0])
        return int((ranked == label[:, None]).sum()), label.size


def _label_probabilities(name: str, label: np.ndarray, output: np.ndarray) -> np.ndarray:
    """p[label] of each sample: the output's (batch, classes) probabilities picked at the labels."""
    label = label.ravel().astype(np.int64)
    if output.ndim != 2 or output.shape[0] != label.size:
        raise ValueError(f"metric {name}: {label.size} labels for outputs of shape {output.shape}")
    return output[np.arange(label.size), label]


class CrossEntropy(EvalMetric):
    """Mean over samples of -log(p[label] + eps), p the output probabilities (MXNet CrossEntropy)."""

    def __init__(self, eps: float = 1e-12):
        super().__init__("cross-entropy")
        self.eps = eps

    def _pair_statistics(self, label, output):
        probability = _label_probabilities(self.name, label, output)
        return float((-np.log(probability + self.eps)).sum()), label.size


def _binary_counts(name: str, labels: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives) over every (label, output)
    pair of one update, class 1 positive, prediction = argmax (MXNet's _BinaryClassificationMetrics)."""
    true_positives = false_positives = false_negatives = true_negatives = 0
    for label, output in zip(labels, outputs):
        label = label.astype(np.int32).ravel()
        predicted = output.argmax(axis=1).ravel()
        _check_same_size(name, label, predicted)
        if np.unique(label).size > 2:
            raise ConfigError(f"metric {name} supports binary classification only; the labels hold more than 2 classes")
        predicted_positive, actual_positive = predicted == 1, label == 1
        true_positives += int((predicted_positive & actual_positive).sum())
        false_positives += int((predicted_positive & ~actual_positive).sum())
        false_negatives += int((~predicted_positive & actual_positive).sum())
        true_negatives += int((~predicted_positive & ~actual_positive).sum())
    return true_positives, false_positives, false_negatives, true_negatives


class F1(EvalMetric):
    """Binary F1 (class 1 positive, prediction = argmax), MXNet's average="macro": each update's
    F1 is computed from that update's counts alone, and the value is their mean over updates, so
    one update is one batch (MXNet: one device's slice of it). An update without a true positive
    scores 0, as in MXNet."""

    def __init__(self):
        super().__init__("f1")

    def _statistics(self, labels, outputs):
        true_positives, false_positives, false_negatives, _ = _binary_counts(self.name, labels, outputs)
        precision = _ratio(true_positives, true_positives + false_positives)
        recall = _ratio(true_positives, true_positives + false_negatives)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return f1, 1


class MCC(EvalMetric):
    """Binary Matthews correlation coefficient, (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    with every zero factor of the denominator taken as 1 (so a constant prediction scores 0), in
    MXNet's average="macro": as F1, the mean over updates of each update's own coefficient."""

    def __init__(self):
        super().__init__("mcc")

    def _statistics(self, labels, outputs):
        true_pos, false_pos, false_neg, true_neg = _binary_counts(self.name, labels, outputs)
        denominator = 1.0
        for factor in (true_pos + false_pos, true_pos + false_neg, true_neg + false_pos, true_neg + false_neg):
            if factor:
                denominator *= factor
        return (true_pos * true_neg - false_pos * false_neg) / math.sqrt(denominator), 1


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


class NegativeLogLikelihood(CrossEntropy):
    """MXNet's NegativeLogLikelihood (alias nll_loss): CrossEntropy's figure under its own name."""

    def __init__(self, eps: float = 1e-12):
        super().__init__(eps)
        self.name = "nll-loss"


class Perplexity(EvalMetric):
    """exp(sum(-log max(p[label], 1e-10)) / samples), the sums and counts pooled over every update
    (MXNet's Perplexity with ignore_label=None: every label counts; the value is exp of the pooled
    mean, not a mean of per-batch perplexities). Labels past the last class are clipped to it, as
    MXNet's pick does."""

    def __init__(self):
        super().__init__("perplexity")

    def _pair_statistics(self, label, output):
        if label.size * output.shape[-1] != output.size:
            raise ValueError(f"metric {self.name}: {label.size} labels for outputs of shape {output.shape}")
        classes = output.reshape(label.size, output.shape[-1])
        picked = np.clip(label.ravel().astype(np.int64), 0, classes.shape[1] - 1)
        probability = classes[np.arange(label.size), picked]
        return float(-np.log(np.maximum(probability, 1e-10)).sum()), label.size

    def get(self) -> NameValues:
        return [(name, math.exp(mean)) for name, mean in super().get()]  # exp(nan) is nan

    def get_global(self) -> NameValues:
        return [(name, math.exp(mean)) for name, mean in super().get_global()]


class PearsonCorrelation(EvalMetric):
    """Pearson's r between the flattened outputs and labels, MXNet's average="macro": one
    coefficient per (label, output) pair, the value their mean. Labels and outputs must hold as
    many numbers (a regression network's (N, 1) outputs against (N,) labels, or one-hot labels
    against class probabilities). A constant side has no coefficient: NaN, as numpy and MXNet."""

    def __init__(self):
        super().__init__("pearsonr")

    def _pair_statistics(self, label, output):
        label, output = label.ravel().astype(np.float64), output.ravel().astype(np.float64)
        _check_same_size(self.name, label, output)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.corrcoef(output, label)[0, 1]), 1


class Loss(EvalMetric):
    """The mean training loss per sample. MXNet's Loss averages the values of a MakeLoss output;
    flow's networks output class probabilities and train with softmax cross-entropy, so `loss`
    reads that loss off the probabilities: -log p[label], mean over samples, p floored at
    float32's smallest normal so that an underflowed probability gives a large finite figure.
    Unlike `ce` it adds no eps: it is the training loss to float32 rounding."""

    def __init__(self):
        super().__init__("loss")

    def _pair_statistics(self, label, output):
        probability = _label_probabilities(self.name, label, output).astype(np.float64)
        return float(-np.log(np.maximum(probability, np.finfo(np.float32).tiny)).sum()), label.size


class _Regression(EvalMetric):
    """MXNet's MAE/MSE/RMSE: each (label, output) pair gives one batch mean, and the value is the
    mean of those batch means (not a per-sample mean; RMSE is the mean of per-batch RMSEs). A 1-D
    label or output is taken as a column, so (N,) labels against (N, 1) outputs line up."""

    def _pair_statistics(self, label, output):
        label = label.reshape(label.shape[0], 1) if label.ndim == 1 else label
        output = output.reshape(output.shape[0], 1) if output.ndim == 1 else output
        return float(self._batch_value(label - output)), 1

    def _batch_value(self, error: np.ndarray) -> float:
        raise NotImplementedError


class MAE(_Regression):
    def __init__(self):
        super().__init__("mae")

    def _batch_value(self, error):
        return np.abs(error).mean()


class MSE(_Regression):
    def __init__(self):
        super().__init__("mse")

    def _batch_value(self, error):
        return (error ** 2.0).mean()


class RMSE(_Regression):
    def __init__(self):
        super().__init__("rmse")

    def _batch_value(self, error):
        return np.sqrt((error ** 2.0).mean())


class CompositeMetric(EvalMetric):
    """Several metrics updated together; get() lists each child's (name, value) in order."""

    def __init__(self, metrics: Sequence[EvalMetric]):
        self.metrics = list(metrics)
        super().__init__("composite")

    def statistics(self, labels: Any, outputs: Any) -> tuple:
        labels, outputs = _arrays(self.name, labels, outputs)  # converted once for every child
        return tuple([metric._statistics(labels, outputs) for metric in self.metrics])

    def add(self, statistics: tuple) -> None:
        for metric, child_statistics in zip(self.metrics, statistics):
            metric.add(child_statistics)

    def reset_local(self) -> None:
        for metric in self.metrics:
            metric.reset_local()

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()

    def get(self) -> NameValues:
        return [pair for metric in self.metrics for pair in metric.get()]

    def get_global(self) -> NameValues:
        return [pair for metric in self.metrics for pair in metric.get_global()]


# MXNet's registry names and aliases for the metrics fit.py users pick.
_METRICS = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "top_k_acc": TopKAccuracy,
    "ce": CrossEntropy,
    "cross-entropy": CrossEntropy,
    "f1": F1,
    "mcc": MCC,
    "negativeloglikelihood": NegativeLogLikelihood,
    "nll_loss": NegativeLogLikelihood,
    "perplexity": Perplexity,
    "pearsoncorrelation": PearsonCorrelation,
    "pearsonr": PearsonCorrelation,
    "loss": Loss,
    "mae": MAE,
    "mse": MSE,
    "rmse": RMSE,
}
METRIC_NAMES = tuple(_METRICS)


def metric_arguments_problem(names: Sequence[str], top_k: Any) -> tuple[str, str] | None:
    """Why `create_metric(names, top_k)` would fail, as (the argument at fault, "metrics" or
    "top_k"; what is wrong and what is valid), or None. The config asks this on load, so that a
    run with a bad metric stops before it starts."""
    for name in names:
        if name.lower() not in _METRICS:
            return "metrics", f"unknown metric {name!r}; valid: {', '.join(METRIC_NAMES)}"
    if not isinstance(top_k, int) or top_k < 0:
        return "top_k", f"expected a non-negative integer, got {top_k!r}"
    asks_top_k = any(_METRICS[name.lower()] is TopKAccuracy for name in names)
    if top_k == 1 or (asks_top_k and top_k == 0):  # MXNet's TopKAccuracy asserts the same
        return "top_k", f"top_k_accuracy needs top_k >= 2 (0: no top-k metric; top-1 is accuracy), got {top_k}"
    return None


def create_metric(names: Sequence[str], top_k: int = 0) -> CompositeMetric:
    """The metrics fit.py evaluates: `names` (e.g. the config's ["accuracy"]), plus
    top_k_accuracy_<top_k> when top_k > 0 and `names` does not already ask for it."""
    problem = metric_arguments_problem(names, top_k)
    if problem:
        raise ConfigError("%s: %s" % problem)
    metrics: list[EvalMetric] = []
    for name in names:
        kind = _METRICS[name.lower()]
        metrics.append(kind(top_k) if kind is TopKAccuracy else kind())
    if top_k > 0 and not any(isinstance(metric, TopKAccuracy) for metric in metrics):
        metrics.append(TopKAccuracy(top_k))
    return CompositeMetric(metrics)


# --- log lines, exactly as MXNet prints them (tools/parse_log.py and users' scripts read them) ---


def speedometer_line(epoch: int, batch_start: int, batch_end: int, speed: float, name_values: NameValues) -> str:
    """Speedometer's report. With auto_reset MXNet prints `Batch [end-frequent-end]` (the first
    report of an epoch reads `Batch [0-20]` for frequent 20, batch indices counting from 0);
    without it, `Batch [0-end]`."""
    line = "Epoch[%d] Batch [%d-%d]\tSpeed: %.2f samples/sec" % (epoch, batch_start, batch_end, speed)
    return line + "".join("\t%s=%f" % (name, value) for name, value in name_values)


def train_line(epoch: int, name: str, value: float) -> str:
    return "Epoch[%d] Train-%s=%f" % (epoch, name, value)


def time_cost_line(epoch: int, seconds: float) -> str:
    return "Epoch[%d] Time cost=%.3f" % (epoch, seconds)


def validation_line(epoch: int, name: str, value: float) -> str:
    return "Epoch[%d] Validation-%s=%f" % (epoch, name, value)


def checkpoint_line(path: str) -> str:
    """After each saved parameter file (MXNet's save_checkpoint), the path of the .params file."""
    return 'Saved checkpoint to "%s"' % (path,)


def io_speed_line(batch: int, speed: float) -> str:
    """fit.py --test-io: every disp_batches batches, `batch` the 0-based index of the last one."""
    return "Batch [%d]\tSpeed: %.2f samples/sec" % (batch, speed)
