"""The console: events in, MXNet's log lines (and a progress bar on a terminal) out; without it a run is silent."""

import logging
import re
import warnings

import pytest

import flow
from flow.config import config_from_dict
from flow.console import log_run
from flow.events import (BatchEnd, CheckpointSaved, CheckpointsSkipped, CheckpointUnverified, EpochEnd,
                         LearningRateAdjusted, LearningRateChanged,
                         NumExamplesBelowRecords, RunFailed, RunFinished, RunStarted, ThreadsOversubscribed,
                         Validation)
from flow.run import open_run
from tests.fixtures import MXNET_FIXTURES
from tests.test_metrics import parse_log_regexes

EVENTS = [
    NumExamplesBelowRecords(100, 200, "data/val.rec"),
    CheckpointsSkipped(3, ["runs/m-0005.params: a", "runs/m-0004.states: b"]),
    CheckpointUnverified("runs/m-0003.params"),
    ThreadsOversubscribed(2, 1, 4, 2),
    LearningRateAdjusted(0, 0.01),  # as a resumed run starts (here, for the lines, from epoch 0)
    RunStarted(0, 2, ["cpu"], "local", 1000, 4),
    BatchEnd(0, 2, 1234.5678, [("accuracy", 0.5), ("cross-entropy", 1.25)], 0.1, 0),
    EpochEnd(0, [("accuracy", 0.6), ("cross-entropy", 1.0)], 2.5, 64, 4),
    Validation(0, [("accuracy", 0.75), ("cross-entropy", 0.5)], 32),
    LearningRateChanged(5, 0.001),
    BatchEnd(1, 2, 99.0, [("accuracy", 0.875), ("cross-entropy", 0.25)], 0.1, 0),
    CheckpointSaved(1, "runs/m-0001.params", "runs/m-0001.states"),  # saved beside epoch 1's training
    EpochEnd(1, [("accuracy", 0.9), ("cross-entropy", 0.3)], 2.0, 64, 4),
    RunFinished(2, 8, 5.0),
]

LINES = [
    "data.num_examples (100) is less than the 200 records of data/val.rec: the lr schedule counts epochs of 100 "
    "examples, so its epochs end mid-epoch, ahead of the epochs the log shows",
    "resuming from epoch 3, the newest checkpoint that verifies; skipped: runs/m-0005.params: a; runs/m-0004.states: b",
    "runs/m-0003.params: no checksums to verify (written by a flow from before them); loaded as it is",
    "train.torch_threads (2) on 1 CPU device(s) and data.data_nthreads (4) exceed the 2 cores this process may use: "
    "torch and the loader will take turns on them (train.torch_threads = 0 shares them out)",
    "Adjust learning rate to 1.000000e-02 for epoch 0",
    "Epoch[0] Batch [0-2]\tSpeed: 1234.57 samples/sec\taccuracy=0.500000\tcross-entropy=1.250000",
    "Epoch[0] Train-accuracy=0.600000",
    "Epoch[0] Train-cross-entropy=1.000000",
    "Epoch[0] Time cost=2.500",
    "Epoch[0] Validation-accuracy=0.750000",
    "Epoch[0] Validation-cross-entropy=0.500000",
    "Update[5]: Change learning rate to 1.00000e-03",
    "Epoch[1] Batch [0-2]\tSpeed: 99.00 samples/sec\taccuracy=0.875000\tcross-entropy=0.250000",
    'Saved checkpoint to "runs/m-0001.params"',
    "Epoch[1] Train-accuracy=0.900000",
    "Epoch[1] Train-cross-entropy=0.300000",
    "Epoch[1] Time cost=2.000",
]


@pytest.fixture(autouse=True)
def plain_flow_logger():
    """The flow logger as a program that embeds flow finds it (`flow run` in an earlier test may have set it up)."""
    logger = logging.getLogger("flow")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:], logger.propagate = [], True
    logger.setLevel(logging.NOTSET)
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


async def stream(events):
    for event in events:
        yield event


def flow_records(caplog):
    return [record for record in caplog.records if record.name.startswith("flow")]


async def test_events_become_exactly_mxnets_lines_in_order(caplog):
    caplog.set_level(logging.INFO, logger="flow")
    await log_run(stream(EVENTS))
    records = flow_records(caplog)
    assert [record.getMessage() for record in records] == LINES
    assert [record.levelno for record in records] == [logging.WARNING] * 4 + [logging.INFO] * (len(LINES) - 4)


async def test_the_lines_parse_with_parse_log(caplog):
    caplog.set_level(logging.INFO, logger="flow")
    await log_run(stream(EVENTS))
    lines = [record.getMessage() for record in flow_records(caplog)]
    regexes = parse_log_regexes("accuracy")
    assert [regexes["train"].match(line).groups() for line in lines if regexes["train"].match(line)] == [
        ("0", "0.600000"), ("1", "0.900000")]
    assert [regexes["validation"].match(line).groups() for line in lines if regexes["validation"].match(line)] == [
        ("0", "0.750000")]
    assert [regexes["time"].match(line).groups() for line in lines if regexes["time"].match(line)] == [
        ("0", "2.500"), ("1", "2.000")]
    # MXNet's lr lines, read back with the numbers they carry
    changes = [re.fullmatch(r"Update\[(\d+)\]: Change learning rate to (\S+)", line) for line in lines]
    assert [(int(m[1]), float(m[2])) for m in changes if m] == [(5, 0.001)]
    adjusts = [re.fullmatch(r"Adjust learning rate to (\S+) for epoch (\d+)", line) for line in lines]
    assert [(float(m[1]), int(m[2])) for m in adjusts if m] == [(0.01, 0)]


async def test_a_failed_run_adds_no_line_of_its_own(caplog):
    caplog.set_level(logging.INFO, logger="flow")
    await log_run(stream([RunStarted(0, 1, ["cpu"], "local", 10, 4), RunFailed("OSError", "disk full")]))
    assert flow_records(caplog) == []  # the CLI prints the error itself


async def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys, caplog):
    caplog.set_level(logging.INFO, logger="flow")
    await log_run(stream(EVENTS))
    assert capsys.readouterr().err == ""


async def test_progress_bar_follows_the_batch_reports_when_asked(capsys):
    await log_run(stream(EVENTS), progress=True)
    err = capsys.readouterr().err
    assert "epoch 0" in err and "3/4" in err and "epoch 1" in err  # BatchEnd 2: three of four batches done


async def test_no_progress_bar_without_batches_per_epoch(capsys):
    started = RunStarted(0, 2, ["cpu"], "local", 1000, 0)  # custom data without num_examples
    await log_run(stream([started, *(event for event in EVENTS if not isinstance(event, RunStarted))]), progress=True)
    assert capsys.readouterr().err == ""


def records_config(tmp_path):
    """Every kind of event a run sends, the num_examples warning included: val.rec (200 records) for
    training and validation, checkpoints, a Speedometer report every batch."""
    return config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "val.rec"), "data_val": str(MXNET_FIXTURES / "val.rec"),
                 "image_shape": [3, 32, 32], "num_classes": 10, "batch_size": 50, "num_examples": 100,
                 "data_nthreads": 1},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 2, "lr": 0.01, "disp_batches": 1},
        "checkpoint": {"model_prefix": str(tmp_path / "model")},
    })


async def test_an_embedded_run_without_a_console_writes_nothing(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        result = await flow.train(records_config(tmp_path))
    assert result.epochs == 2 and len(result.checkpoints) == 2
    assert capfd.readouterr() == ("", "")
    assert flow_records(caplog) == []
    assert [str(warning.message) for warning in warned] == []


async def test_the_same_run_with_the_console_logs_each_kind_of_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flow")
    async with open_run(records_config(tmp_path)) as run:
        await flow.log_run(run.events())
    lines = [record.getMessage() for record in flow_records(caplog)]
    assert lines[0].startswith("data.num_examples (100) is less than the 200 records of ")
    reports = [match.groups() for line in lines if (match := re.match(r"Epoch\[(\d)\] Batch \[(\d)-(\d)\]\t", line))]
    assert reports == [(epoch, *window) for epoch in "01" for window in (("0", "1"), ("1", "2"), ("2", "3"))]
    assert [line for line in lines if line.startswith("Saved checkpoint to ")] == [
        f'Saved checkpoint to "{tmp_path / "model"}-{epoch:04d}.params"' for epoch in (1, 2)]
    assert [line.split("=")[0] for line in lines if "Validation" in line] == [
        f"Epoch[{epoch}] Validation-{name}" for epoch in (0, 1) for name in ("accuracy",)]
