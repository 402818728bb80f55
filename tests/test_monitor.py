"""MXNet's Monitor: its statistics against a hand computation, its pattern, its every-N batches, its lines,
and that a run without it sends no monitor events."""

import logging
import math
import re

import numpy as np
import pytest
import torch
import trio

from flow.actors.compute import ComputeSettings, TrainResult, compute
from flow.console import log_run
from flow.errors import ConfigError
from flow.event_log import read_events
from flow.events import BatchEnd, MonitorStatistics
from flow.monitor import Monitor, monitor_line, statistic
from flow.run import open_run, softmax_cross_entropy
from tests.test_compute import batch, plain_sgd, tiny_net, train_slice
from tests.test_run import small_config, synthetic_data

LIMIT = 10  # seconds; every step here takes milliseconds
LINE = re.compile(r"^Batch: (?P<batch>[ \d]{6}\d|\d{8,}) (?P<name>.{30}|\S{31,}) (?P<value>\S+)\t$")  # MXNet's widths
TINY_NAMES = ["0_output", "1_output", "1.bias_grad", "1.weight_grad", "1.weight", "1.bias"]


def hand_statistic(array) -> float:
    array = np.asarray(array, dtype=np.float64)
    return float(np.linalg.norm(array) / math.sqrt(array.size))


async def run_replica(settings: ComputeSettings, slices, make_updater=None) -> list[TrainResult]:
    work_send, work_receive = trio.open_memory_channel(len(slices))
    result_send, result_receive = trio.open_memory_channel(len(slices))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(compute, settings, tiny_net(), softmax_cross_entropy, work_receive, result_send,
                                make_updater)
            for work in slices:
                await work_send.send(work)
            results = [await result_receive.receive() for _ in slices]
            await work_send.aclose()
    return results


async def test_statistics_of_a_tiny_model_equal_a_hand_computation():
    """flatten -> Linear(12, 3), one SGD step of lr 0.1 on 4 samples: outputs, summed gradients (last
    layer first), then the parameters after the update, as MXNet prints them after `update()`."""
    data, label = batch()
    net = tiny_net()
    weight, bias = net[1].weight.detach().double().numpy(), net[1].bias.detach().double().numpy()
    x = data.double().numpy().reshape(4, 12)
    logits = x @ weight.T + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    d_logits = probabilities - np.eye(3)[label.long().numpy()]  # softmax cross-entropy summed over the samples
    weight_grad, bias_grad = d_logits.T @ x, d_logits.sum(axis=0)
    lr, scale = 0.1, 1 / 4
    expected = {"0_output": x, "1_output": logits, "1.bias_grad": bias_grad, "1.weight_grad": weight_grad,
                "1.weight": weight - lr * scale * weight_grad, "1.bias": bias - lr * scale * bias_grad}

    settings = ComputeSettings("cpu", replica=0, precision="fp32", seed=0, monitor=1)
    [result] = await run_replica(settings, [train_slice(data, label, scale=scale, lr=lr)], plain_sgd)
    assert result.monitor.batch == 1
    assert [name for name, _ in result.monitor.statistics] == TINY_NAMES
    for name, value in result.monitor.statistics:
        assert value == pytest.approx(hand_statistic(expected[name]), rel=1e-5), name
        assert value == float(np.float32(value))  # computed in float32, as MXNet's


async def test_every_nth_batch_counting_from_one_on_the_first_replica_only():
    data, label = batch()
    slices = [train_slice(data, label) for _ in range(7)]
    first = await run_replica(ComputeSettings("cpu", 0, "fp32", 0, monitor=3), slices, plain_sgd)
    assert [None if r.monitor is None else r.monitor.batch for r in first] == [1, None, None, 4, None, None, 7]
    second = await run_replica(ComputeSettings("cpu", 1, "fp32", 0, monitor=3), slices)
    assert all(r.monitor is None for r in second) and all(r.gradients is not None for r in second)
    off = await run_replica(ComputeSettings("cpu", 0, "fp32", 0), slices, plain_sgd)
    assert all(r.monitor is None for r in off)


@pytest.mark.parametrize("pattern, names", [
    (".*", TINY_NAMES),
    (".*_output", ["0_output", "1_output"]),
    (r"1\.weight", ["1.weight_grad", "1.weight"]),  # re.match: a prefix match, as MXNet's
    (".*_grad$", ["1.bias_grad", "1.weight_grad"]),
    ("fc", []),
])
def test_the_pattern_filters_names(pattern, names):
    net = tiny_net()
    batch_statistics = Monitor(net, 1, pattern).tic()
    with batch_statistics:
        net(batch()[0]).sum().backward()
    batch_statistics.record_gradients()
    assert [name for name, _ in batch_statistics.toc().statistics] == names
    assert not net[1]._forward_hooks  # the hooks live only through the watched forward pass


def test_buffers_follow_the_parameters_and_integer_ones_are_left_out():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.ReLU())
    batch_statistics = Monitor(net, 1).tic()
    with batch_statistics:
        net(torch.tensor([[1.0, -2.0], [3.0, 4.0]])).sum().backward()
    batch_statistics.record_gradients()
    statistics = dict(batch_statistics.toc().statistics)
    assert list(statistics) == ["0_output", "1_output", "0.bias_grad", "0.weight_grad", "0.weight", "0.bias",
                                "0.running_mean", "0.running_var"]
    assert statistics["0.running_mean"] == pytest.approx(hand_statistic([0.2, 0.1]))  # momentum 0.1 from 0
    assert statistics["1_output"] == pytest.approx(hand_statistic([[0, 0], [1, 1]]), rel=1e-4)  # normalized, relu


def test_statistic_is_norm_over_root_size_in_float32():
    tensor = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.bfloat16)
    assert statistic(tensor).dtype == torch.float32 and statistic(tensor).item() == 2.5


@pytest.mark.parametrize("batch_number, name, value, line", [
    (1, "fc1_weight", 0.1, "Batch:       1 fc1_weight                     0.1\t"),
    (41, "0.weight_grad", float(np.float32(0.012345678)), "Batch:      41 0.weight_grad                  0.012345678\t"),
    (12345678, "stage1_unit1.conv1_output_is_longer_than_30", 2.5e-08,
     "Batch: 12345678 stage1_unit1.conv1_output_is_longer_than_30 2.5e-08\t"),
    (3, "x", float("nan"), "Batch:       3 x                              nan\t"),
])
def test_lines_are_formatted_as_mxnet_s_and_parse_back(batch_number, name, value, line):
    assert monitor_line(batch_number, name, value) == line
    parsed = LINE.match(line)
    assert int(parsed["batch"]) == batch_number and parsed["name"].rstrip() == name
    assert np.float32(parsed["value"]) == np.float32(value) or math.isnan(value)


async def test_a_run_sends_every_nth_batch_s_statistics_logs_them_and_sends_none_when_off(tmp_path, caplog):
    """Two devices, 6 batches an epoch, 2 epochs, monitor = 4: batches 1, 5 and 9 of the run, from the
    first replica, each before its batch's Speedometer line; the event log holds them as sent."""
    caplog.set_level(logging.INFO, logger="flow")
    config = small_config(tmp_path, train={"monitor": 4, "monitor_pattern": ".*weight", "devices": ["cpu", "cpu"]})
    events = []

    async def log_and_keep(subscription):
        async def kept():
            async for event in subscription:
                events.append(event)
                yield event
        await log_run(kept())

    async with open_run(config, train_data=synthetic_data()) as run:
        await log_and_keep(run.events())
    monitored = [event for event in events if isinstance(event, MonitorStatistics)]
    assert [event.batch for event in monitored] == [1, 5, 9]
    assert [name for name, _ in monitored[0].statistics] == ["fc3.weight_grad", "fc2.weight_grad", "fc1.weight_grad",
                                                             "fc1.weight", "fc2.weight", "fc3.weight"]
    batch_ends = [i for i, event in enumerate(events) if isinstance(event, BatchEnd)]
    assert events.index(monitored[1]) < batch_ends[2]  # batch 5 (epoch 0, index 4) before its line of batches 2-4
    assert [event for event in read_events(str(tmp_path / "model-events.msgpack"))
            if isinstance(event, MonitorStatistics)] == monitored

    lines = [LINE.match(record.getMessage()) for record in caplog.records if record.name == "flow"]
    logged = [(int(line["batch"]), line["name"].rstrip(), np.float32(line["value"])) for line in lines if line]
    assert logged == [(event.batch, name, np.float32(value)) for event in monitored for name, value in event.statistics]

    async with open_run(small_config(tmp_path / "off"), train_data=synthetic_data()) as run:
        assert not [event async for event in run.events() if isinstance(event, MonitorStatistics)]


def test_a_pattern_that_is_no_regular_expression_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.monitor_pattern: expected a regular expression, got '\(fc'"):
        small_config(tmp_path, train={"monitor_pattern": "(fc"})
