"""Which way each metric improves, and the watch of the best value and the epochs since."""

import math

import pytest

from flow.errors import ConfigError
from flow.metric_watch import HIGHER_IS_BETTER, MetricWatch, watched_metric
from flow.metrics import METRIC_NAMES, create_metric


def test_every_metric_flow_knows_has_a_direction():
    for name in METRIC_NAMES:
        assert type(create_metric([name], 5).metrics[0]) in HIGHER_IS_BETTER


@pytest.mark.parametrize("metrics, top_k, name, expected", [
    (("accuracy", "ce"), 0, "", ("accuracy", "max")),  # empty: the first
    (("ce", "accuracy"), 0, "", ("cross-entropy", "min")),
    (("accuracy", "ce"), 0, "ce", ("cross-entropy", "min")),  # an alias
    (("accuracy", "cross-entropy"), 0, "ce", ("cross-entropy", "min")),
    (("accuracy",), 5, "top_k_accuracy", ("top_k_accuracy_5", "max")),  # the one top_k adds
    (("accuracy",), 5, "top_k_accuracy_5", ("top_k_accuracy_5", "max")),  # as Validation names it
    (("acc", "f1"), 0, "f1", ("f1", "max")),
    (("mae", "mse", "rmse"), 0, "rmse", ("rmse", "min")),
])
def test_the_watched_metric_is_named_as_validation_reports_it(metrics, top_k, name, expected):
    assert watched_metric(metrics, top_k, name) == expected


@pytest.mark.parametrize("name", ["f1", "top_k_accuracy", "mcc", "loss"])
def test_a_metric_validation_does_not_report_is_refused_with_those_it_does(name):
    with pytest.raises(ConfigError, match=r"validation metrics \(accuracy, cross-entropy\).*add it to train.metrics"):
        watched_metric(("accuracy", "ce"), 0, name)


def test_max_improves_on_any_rise_and_counts_epochs_since():
    watch = MetricWatch("accuracy", "max")
    improved = [watch.observe(epoch, [("accuracy", value)]) for epoch, value in enumerate([0.5, 0.6, 0.6, 0.55, 0.7])]
    assert improved == [True, True, False, False, True]
    assert (watch.best, watch.best_epoch, watch.stale_epochs) == (0.7, 4, 0)


def test_min_with_a_min_delta_counts_small_falls_as_no_improvement():
    watch = MetricWatch("cross-entropy", "min", min_delta=0.1)
    values = [1.0, 0.95, 0.92, 0.85, math.nan, 0.5]
    improved = [watch.observe(epoch, [("accuracy", 0.0), ("cross-entropy", value)]) for epoch, value in
                enumerate(values)]
    # 0.95 and 0.92 are within 0.1 of 1.0; 0.85 is not; NaN never improves
    assert improved == [True, False, False, True, False, True]
    assert (watch.best, watch.best_epoch) == (0.5, 5)


def test_nan_first_leaves_no_best():
    watch = MetricWatch("accuracy", "max")
    assert not watch.observe(0, [("accuracy", math.nan)])
    assert (watch.best, watch.stale_epochs) == (None, 1)


def test_a_resumed_watch_carries_on_only_the_same_metric_and_mode():
    saved = MetricWatch("accuracy", "max", 0.01)
    saved.observe(0, [("accuracy", 0.5)])
    saved.observe(1, [("accuracy", 0.505)])
    resumed = MetricWatch("accuracy", "max", 0.01)
    resumed.resume(saved.state())
    assert resumed == saved and resumed.stale_epochs == 1
    other = MetricWatch("accuracy", "max", 0.0)  # min_delta changed: a fresh count
    other.resume(saved.state())
    assert (other.best, other.stale_epochs) == (None, 0)
