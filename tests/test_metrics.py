"""flow.metrics against hand-computed values (MXNet 1.9.1's metric.py docstring examples among
them) and the log lines against the regexes MXNet's own tools read them with."""

import math
import re

import numpy as np
import pytest
import torch

from flow.errors import ConfigError
from flow.metrics import (F1, MAE, MCC, MSE, RMSE, Accuracy, CompositeMetric, CrossEntropy, Loss,
                          NegativeLogLikelihood, PearsonCorrelation, Perplexity, TopKAccuracy,
                          create_metric, io_speed_line, speedometer_line, time_cost_line,
                          train_line, validation_line)

# metric.py's docstring examples
PROBABILITIES = np.array([[0.3, 0.7], [0.0, 1.0], [0.4, 0.6]], dtype=np.float32)
LABELS = np.array([0, 1, 1], dtype=np.float32)
REGRESSION_OUTPUTS = np.array([3, -0.5, 2, 7], dtype=np.float32).reshape(4, 1)
REGRESSION_LABELS = np.array([2.5, 0.0, 2, 8], dtype=np.float32).reshape(4, 1)


def value(metric, global_=False):
    [(_, result)] = metric.get_global() if global_ else metric.get()
    return result


def test_accuracy_and_the_local_global_split():
    metric = Accuracy()
    metric.update([LABELS], [PROBABILITIES])
    assert metric.get() == [("accuracy", pytest.approx(2 / 3))]
    metric.reset_local()  # what Speedometer's auto_reset does after a report
    assert math.isnan(value(metric))
    metric.update(np.array([1.0]), np.array([[0.2, 0.8]]))
    assert value(metric) == 1.0
    assert value(metric, global_=True) == pytest.approx(3 / 4)
    metric.reset()
    assert math.isnan(value(metric)) and math.isnan(value(metric, global_=True))


def test_accuracy_takes_torch_tensors_class_indices_and_bfloat16():
    metric = Accuracy()
    metric.update(torch.tensor([0, 1, 1]), torch.tensor(PROBABILITIES).to(torch.bfloat16))
    metric.update(np.array([2, 2]), np.array([2, 0]))  # outputs already class indices
    assert value(metric) == pytest.approx(3 / 5)


def test_top_k_accuracy():
    outputs = np.array([[0.1, 0.2, 0.3, 0.4],   # top 2: classes 3, 2
                        [0.4, 0.3, 0.2, 0.1],   # top 2: classes 0, 1
                        [0.3, 0.1, 0.4, 0.2]])  # top 2: classes 2, 0
    metric = TopKAccuracy(top_k=2)
    assert metric.name == "top_k_accuracy_2"
    metric.update(np.array([2, 3, 0]), outputs)
    assert value(metric) == pytest.approx(2 / 3)
    everything = TopKAccuracy(top_k=5)  # more than the 4 classes: every label is in
    everything.update(np.array([2, 3, 0]), outputs)
    assert everything.get() == [("top_k_accuracy_5", 1.0)]


def test_cross_entropy_on_probabilities():
    metric = CrossEntropy()
    metric.update([LABELS], [PROBABILITIES])
    assert metric.get() == [("cross-entropy", pytest.approx(0.57159948, rel=1e-6))]
    metric.update(np.array([0]), np.array([[0.0, 1.0]], dtype=np.float32))  # p = 0: -log(eps)
    assert value(metric) == pytest.approx((0.57159948 * 3 - math.log(1e-12)) / 4, rel=1e-6)


def test_f1_averages_per_update_scores():
    metric = F1()
    metric.update([LABELS], [PROBABILITIES])  # tp 2, fp 1, fn 0: precision 2/3, recall 1
    assert value(metric) == pytest.approx(0.8)
    metric.reset_local()
    # Every sample predicted 0 with two positives: no true positive, F1 0 for this update.
    metric.update(np.array([1, 1, 0]), np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]]))
    assert value(metric) == 0.0
    assert value(metric, global_=True) == pytest.approx(0.4)  # mean of 0.8 and 0, not pooled counts
    with pytest.raises(ConfigError, match="binary"):
        metric.update(np.array([0, 1, 2]), PROBABILITIES)


def test_nll_loss_docstring_value():
    metric = NegativeLogLikelihood()
    metric.update([LABELS], [PROBABILITIES])
    assert metric.get() == [("nll-loss", pytest.approx(0.57159948, rel=1e-6))]


def test_mcc_averages_per_update_coefficients():
    metric = MCC()
    metric.update([LABELS], [PROBABILITIES])  # tp 2, fp 1, no negatives predicted: numerator 0
    assert value(metric) == 0.0
    metric.reset()
    # predictions 1 0 1 0 1 against labels 1 1 0 0 1: tp 2, fn 1, fp 1, tn 1: (2 - 1) / sqrt(3*3*2*2)
    metric.update(np.array([1, 1, 0, 0, 1]), np.array([[.2, .8], [.6, .4], [.3, .7], [.9, .1], [.1, .9]]))
    assert value(metric) == pytest.approx(1 / 6)
    metric.update(np.array([1, 0]), np.array([[.2, .8], [.6, .4]]))  # tp 1, tn 1: 1
    # the mean of 1/6 and 1 (MXNet 1.9.1 prints 0.5833333333333334), not the pooled counts' 0.408
    assert value(metric, global_=True) == pytest.approx(0.5833333333333334)
    with pytest.raises(ConfigError, match="mcc supports binary"):
        metric.update(np.array([0, 1, 2]), PROBABILITIES)


def test_perplexity_is_exp_of_the_pooled_mean():
    metric = Perplexity()
    metric.update([LABELS], [PROBABILITIES])
    assert metric.get() == [("perplexity", pytest.approx(1.7710976285155853, rel=1e-6))]
    metric.update(np.array([0]), np.array([[0.0, 1.0]]))  # p = 0 counts as 1e-10
    # exp((-log .3 - log 1 - log .6 - log 1e-10) / 4), as MXNet 1.9.1 prints it
    assert value(metric, global_=True) == pytest.approx(485.4916974826884, rel=1e-6)
    metric.reset()
    assert math.isnan(value(metric))


def test_pearsonr_averages_per_pair_coefficients():
    metric = PearsonCorrelation()
    metric.update([np.array([[1, 0], [0, 1], [0, 1]])], [PROBABILITIES])  # one-hot labels
    assert metric.get() == [("pearsonr", pytest.approx(0.42163704544016178, rel=1e-6))]
    metric.update(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 5]).reshape(4, 1))  # r = 0.8315...
    assert value(metric) == pytest.approx(0.6265794430302308, rel=1e-6)
    with pytest.raises(ValueError, match="pearsonr"):
        metric.update(LABELS, PROBABILITIES)


def test_loss_is_the_mean_cross_entropy_training_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0], [1.0, 4.0, -2.0]])
    labels = torch.tensor([0, 1, 1])
    metric = Loss()
    metric.update(labels, torch.softmax(logits, dim=1))
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metric.get() == [("loss", pytest.approx(expected, rel=1e-6))]
    metric.update(np.array([0]), np.array([[0.0, 1.0]]))  # an underflowed probability: large, finite
    assert value(metric) == pytest.approx((3 * expected - math.log(np.finfo(np.float32).tiny)) / 4)


def test_mxnet_names_and_aliases_create_the_new_metrics():
    metric = create_metric(["nll_loss", "NegativeLogLikelihood", "mcc", "perplexity", "pearsonr",
                            "PearsonCorrelation", "loss"])
    assert [name for name, _ in metric.get()] == ["nll-loss", "nll-loss", "mcc", "perplexity", "pearsonr",
                                                  "pearsonr", "loss"]


def test_regression_metrics_docstring_values():
    for metric, expected in ((MAE(), 0.5), (MSE(), 0.375), (RMSE(), 0.612372457981)):
        metric.update([REGRESSION_LABELS], [REGRESSION_OUTPUTS])
        assert value(metric) == pytest.approx(expected)


def test_regression_metrics_average_batch_means():
    first = (np.array([0.0, 0.0]), np.array([1.0, 3.0]))       # errors 1, 3
    second = (np.array([0.0, 0.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0, 2.0]).reshape(4, 1))
    metrics = [MAE(), MSE(), RMSE()]
    for metric in metrics:
        metric.update(*first)
        metric.update(*second)
    mae, mse, rmse = (value(metric) for metric in metrics)
    assert mae == pytest.approx((2.0 + 2.0) / 2)
    assert mse == pytest.approx((5.0 + 4.0) / 2)
    assert rmse == pytest.approx((math.sqrt(5.0) + 2.0) / 2)  # mean of per-batch RMSEs, as MXNet


def test_nothing_accumulated_is_nan():
    for metric in (Accuracy(), TopKAccuracy(3), CrossEntropy(), F1(), MAE(), MSE(), RMSE()):
        assert math.isnan(value(metric)) and math.isnan(value(metric, global_=True))


def test_create_metric_as_fit_py():
    metric = create_metric(["accuracy"], top_k=5)
    assert isinstance(metric, CompositeMetric)
    assert [name for name, _ in metric.get()] == ["accuracy", "top_k_accuracy_5"]
    assert [name for name, _ in create_metric(["acc", "ce"], top_k=0).get()] == ["accuracy", "cross-entropy"]
    assert [name for name, _ in create_metric(["top_k_accuracy"], top_k=3).get()] == ["top_k_accuracy_3"]


def test_composite_updates_and_resets_every_child():
    metric = create_metric(["accuracy", "ce"], top_k=0)
    metric.update(torch.tensor(LABELS), torch.tensor(PROBABILITIES))
    metric.reset_local()
    metric.update(np.array([1.0]), np.array([[0.5, 0.5]], dtype=np.float32))
    local, global_ = dict(metric.get()), dict(metric.get_global())
    assert local["accuracy"] == 0.0 and global_["accuracy"] == pytest.approx(2 / 4)
    assert local["cross-entropy"] == pytest.approx(-math.log(0.5))
    assert global_["cross-entropy"] == pytest.approx((0.57159948 * 3 - math.log(0.5)) / 4, rel=1e-6)
    metric.reset()
    assert all(math.isnan(v) for _, v in metric.get_global())


@pytest.mark.parametrize("names, top_k, message", [
    (["accuracy", "bleu"], 0, "unknown metric 'bleu'; valid: accuracy, acc"),
    (["accuracy"], 1, "top_k_accuracy needs top_k >= 2"),
    (["top_k_accuracy"], 0, "top_k_accuracy needs top_k >= 2"),
    (["accuracy"], -1, "top_k: expected a non-negative integer"),
])
def test_bad_metric_arguments_are_config_errors(names, top_k, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_metric(names, top_k)


# tools/parse_log.py (MXNet 1.9.1), for metric name s
def parse_log_regexes(metric_name):
    return {
        "train": re.compile(r'.*Epoch\[(\d+)\] Train-' + metric_name + r'.*=([.\d]+)'),
        "validation": re.compile(r'.*Epoch\[(\d+)\] Validation-' + metric_name + r'.*=([.\d]+)'),
        "time": re.compile(r'.*Epoch\[(\d+)\] Time.*=([.\d]+)'),
    }


# example/image-classification/benchmark.py reads the --test-io line from str(f.readlines()),
# where the tab shows as backslash-t; its pattern, written here as a raw string:
BENCHMARK_SPEED = r"(?:Batch\s+\[30\]\\tSpeed:\s+)(\d+\.\d+)(?:\s+)"


def test_epoch_lines_parse_with_parse_log():
    regexes = parse_log_regexes("accuracy")
    logged = "2024-01-01 12:00:00,000 Node[0] " + train_line(7, "accuracy", 0.8125)
    assert regexes["train"].match(logged).groups() == ("7", "0.812500")
    assert regexes["validation"].match(validation_line(7, "accuracy", 0.123456)).groups() == ("7", "0.123456")
    assert regexes["time"].match(time_cost_line(7, 12.3456)).groups() == ("7", "12.346")
    assert float(regexes["train"].match(train_line(0, "accuracy", 0.5)).group(2)) == 0.5


def test_log_lines_are_exact():
    assert train_line(3, "top_k_accuracy_5", 0.75) == "Epoch[3] Train-top_k_accuracy_5=0.750000"
    assert validation_line(3, "cross-entropy", 1.5) == "Epoch[3] Validation-cross-entropy=1.500000"
    assert time_cost_line(3, 1.0) == "Epoch[3] Time cost=1.000"
    assert (speedometer_line(3, 20, 40, 1234.5678, [("accuracy", 0.5), ("top_k_accuracy_5", 0.75)])
            == "Epoch[3] Batch [20-40]\tSpeed: 1234.57 samples/sec\taccuracy=0.500000\ttop_k_accuracy_5=0.750000")


def test_speedometer_line_round_trips_its_numbers():
    line = speedometer_line(12, 0, 20, 212.004, [("accuracy", 0.953125), ("cross-entropy", 0.171875)])
    match = re.fullmatch(r"Epoch\[(\d+)\] Batch \[(\d+)-(\d+)\]\tSpeed: ([.\d]+) samples/sec((?:\t[^=\t]+=[.\d]+)*)", line)
    epoch, start, end, speed, metrics = match.groups()
    assert (int(epoch), int(start), int(end), float(speed)) == (12, 0, 20, 212.0)
    pairs = dict(pair.split("=") for pair in metrics.strip("\t").split("\t"))
    assert {name: float(v) for name, v in pairs.items()} == {"accuracy": 0.953125, "cross-entropy": 0.171875}


def test_io_speed_line_parses_with_benchmark_py():
    line = io_speed_line(30, 10234.567)
    assert line == "Batch [30]\tSpeed: 10234.57 samples/sec"
    assert [float(s) for s in re.findall(BENCHMARK_SPEED, str([line + "\n"]))] == [10234.57]
