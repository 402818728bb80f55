"""Whether a validation metric improved: its direction, the best value so far, and the epochs since.

The best checkpoint (`checkpoint.best_metric`) and early stopping (`train.early_stop_patience`)
each keep one `MetricWatch` of the validation figures; the fit loop feeds it each epoch's
Validation and saves its state in the checkpoint's `.states`, so that a resumed run goes on
counting where the first one stopped.

The direction comes from the metric: accuracy, top-k accuracy and F1 are better higher; cross-entropy
and the regression errors (mae, mse, rmse) lower. Every metric flow knows has one
(tests/test_metric_watch.py checks that none is missing), and the config refuses a name it does not know.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flow.errors import ConfigError
from flow.metrics import (F1, MAE, MCC, MSE, RMSE, Accuracy, CrossEntropy, Loss, NegativeLogLikelihood,
                          PearsonCorrelation, Perplexity, TopKAccuracy, create_metric, metric_arguments_problem)

HIGHER_IS_BETTER = {Accuracy: True, TopKAccuracy: True, F1: True, MCC: True, PearsonCorrelation: True,
                    CrossEntropy: False, NegativeLogLikelihood: False, Perplexity: False, Loss: False, MAE: False,
                    MSE: False, RMSE: False}


def watched_metric(metrics: tuple[str, ...], top_k: int, name: str = "") -> tuple[str, str]:
    """(the name Validation reports it by, "max" or "min") of metric `name` among those `metrics` and
    `top_k` compute (an alias such as "ce", or the reported name such as "cross-entropy"); empty: the first.
    A ConfigError (for the caller to name its key) when they do not compute it."""
    computed = create_metric(metrics, top_k).metrics
    if not name:
        chosen = computed[0]
    else:
        reported = {metric.name: metric for metric in computed}
        chosen = reported.get(name)
        if chosen is None and metric_arguments_problem([name], top_k or 2) is None:
            wanted = create_metric([name], top_k or 2).metrics[0].name
            chosen = reported.get(wanted)
        if chosen is None:
            raise ConfigError(f"expected one of the validation metrics ({', '.join(reported)}), got {name!r}; "
                              f"add it to train.metrics")
    return chosen.name, "max" if HIGHER_IS_BETTER[type(chosen)] else "min"


@dataclass(frozen=True)
class WatchSettings:
    """What the fit loop does with each epoch's validation figures (it needs them back from the metric actor)."""

    metric: str  # as Validation reports it: checkpoint.best_metric, or the first metric
    mode: str  # "max" or "min"
    best_checkpoint: bool  # save {model_prefix}-best when `metric` improves on its best
    patience: int  # stop once it has not improved by more than `min_delta` for this many epochs (0: never)
    min_delta: float
    resumed: dict | None = None  # the watches' states from the checkpoint the run resumes, if any


@dataclass
class MetricWatch:
    """The best value of one metric and the epochs since it was last beaten by more than `min_delta`.
    NaN (a metric with nothing counted) never improves."""

    metric: str  # as Validation reports it
    mode: str  # "max" or "min"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    stale_epochs: int = 0  # validations since the last improvement

    def observe(self, epoch: int, metrics: list[tuple[str, float]]) -> bool:
        """Takes epoch `epoch`'s validation figures; whether they improved on the best."""
        value = dict(metrics)[self.metric]
        if self.improves(value):
            self.best, self.best_epoch, self.stale_epochs = value, epoch, 0
            return True
        self.stale_epochs += 1
        return False

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value - self.min_delta > self.best if self.mode == "max" else value + self.min_delta < self.best

    def state(self) -> dict:
        """Plain data for the checkpoint's .states (loaded with weights_only=True)."""
        return asdict(self)

    def resume(self, state: dict | None) -> None:
        """Carries on from a saved `state()`, when it watched the same metric the same way."""
        if state and (state.get("metric"), state.get("mode"), state.get("min_delta")) == (
                self.metric, self.mode, self.min_delta):
            self.best, self.best_epoch, self.stale_epochs = state["best"], state["best_epoch"], state["stale_epochs"]
