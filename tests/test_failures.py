"""A failing actor ends the whole run promptly, with its own error, at start or mid-run.

"At start" the actor's function raises before it touches any of its channels (as the metric actor
did on a metric name it cannot make); "mid-run" something it calls raises after a few calls. Every
run is set for hundreds of epochs, so one that went on after the failure would miss the bound by
far. The clock keeps real time but jumps to the bound once every task has waited two seconds, so
a hung run fails its test in seconds instead of hanging it.
"""

import dataclasses
import functools
import itertools
import logging
import threading

import pytest
import torch
import trio
from trio.testing import MockClock

import flow.actors.compute
import flow.actors.feed
import flow.actors.loader
import flow.actors.param_server
import flow.batch_builder
import flow.checkpoints
import flow.config
import flow.event_log
import flow.fit
import flow.metrics
import flow.run
from flow.cli import main
from flow.config import config_from_dict
from flow.errors import ConfigError, FlowError
from flow.event_log import event_log_path, read_events
from flow.events import CheckpointSaved, RunFailed, RunStarted
from flow.run import train
from tests.fixtures import MXNET_FIXTURES
from tests.test_run import synthetic_data, threads_running_flow_code

BOUND = 30  # seconds: a whole run takes minutes, a failed one well under a second


class Injected(Exception):
    """The error a test makes an actor raise; not a FlowError, since those must end a run too."""


@pytest.fixture
def hang_clock():
    # The first optimizer a process makes takes seconds in its thread (torch imports its compiler
    # stack), with every task waiting: make one here, so that such a wait means a hang.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    return MockClock(rate=1.0, autojump_threshold=2.0)


def records_config(tmp_path, **train):
    """Two replicas (so the parameter server runs too) on 64 MXNet records: 4 batches an epoch, and validation."""
    records = str(MXNET_FIXTURES / "passthrough.rec")
    return config_from_dict({
        "data": {"data_train": records, "data_val": records, "image_shape": [3, 64, 64], "num_classes": 10,
                 "batch_size": 16, "data_nthreads": 2},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 500, "devices": ["cpu", "cpu"], "disp_batches": 2, **train},
        "checkpoint": {"model_prefix": str(tmp_path / "model")},
    })


def custom_data_options(tmp_path):
    """A config and open_run options for the feed actor: the caller's batches, 6 an epoch, and validation."""
    config = config_from_dict({
        "data": {"image_shape": [3, 8, 8], "num_classes": 4, "batch_size": 16, "num_examples": 96},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 500, "devices": ["cpu", "cpu"], "disp_batches": 2},
        "checkpoint": {"model_prefix": str(tmp_path / "model")},
    })
    return config, {"train_data": synthetic_data(), "val_data": synthetic_data(epoch_batches=2, seed=1)}


def failing_after(function, calls: int, message: str):
    """`function`, except that every call after the first `calls` raises Injected(message)."""
    count = itertools.count()

    @functools.wraps(function)
    def failing(*args, **kwargs):
        if next(count) >= calls:
            raise Injected(message)
        return function(*args, **kwargs)
    return failing


# The actor functions, where flow.run looks them up.
ACTORS = {
    "loader": (flow.actors.loader, "loader"),
    "feed": (flow.run, "feed"),
    "compute": (flow.run, "compute"),
    "param_server": (flow.run, "param_server"),
    "metrics": (flow.run, "metrics"),
    "checkpoint": (flow.run, "checkpoint"),
    "bus": (flow.run, "bus"),
    "fit": (flow.run, "fit"),
}

# What each actor calls that fails mid-run, and after how many calls (a few batches into the run).
MID_RUN = {
    "loader": (flow.batch_builder.BatchBuilder, "fill_slice", 12),  # 2 slices a batch, in the worker threads
    "feed": (flow.actors.feed, "_as_batch", 5),
    "compute": (flow.actors.compute._Replica, "train_step", 6),  # in the replica's thread
    "param_server": (flow.actors.param_server._Server, "update", 4),  # in the server's thread
    "metrics": (flow.metrics.CompositeMetric, "add", 5),
    "checkpoint": (flow.checkpoints, "save_checkpoint", 1),  # the second checkpoint, in a thread
    "bus": (flow.event_log.EventLogWriter, "write", 5),
    "fit": (flow.fit._Loop, "send_step", 5),
}


def break_at_start(monkeypatch, actor: str, message: str) -> None:
    async def broken(*args, **kwargs):
        raise Injected(message)
    monkeypatch.setattr(*ACTORS[actor], broken)


def break_mid_run(monkeypatch, actor: str, message: str) -> None:
    owner, name, calls = MID_RUN[actor]
    monkeypatch.setattr(owner, name, failing_after(getattr(owner, name), calls, message))


@pytest.mark.parametrize("phase", ["at start", "mid-run"])
@pytest.mark.parametrize("actor", list(ACTORS))
async def test_a_failing_actor_ends_the_run_promptly_with_its_error(tmp_path, monkeypatch, hang_clock, actor, phase):
    message = f"{actor} failed {phase}"
    (break_at_start if phase == "at start" else break_mid_run)(monkeypatch, actor, message)
    if actor == "feed":
        config, options = custom_data_options(tmp_path)
    else:
        config, options = records_config(tmp_path), {}
    with trio.fail_after(BOUND):
        with pytest.raises(Injected, match=f"^{message}$"):
            await train(config, **options)
    assert not threads_running_flow_code()  # the loader's workers and every actor's thread are done
    if actor == "bus":
        return  # the bus writes the event log: it holds what the bus got to
    events = read_events(event_log_path(config.checkpoint.model_prefix))
    assert events[-1] == RunFailed("Injected", message)
    if phase == "mid-run":
        assert isinstance(events[0], RunStarted)
        if actor == "checkpoint":
            assert [event.epoch for event in events if isinstance(event, CheckpointSaved)] == [1]


@pytest.mark.parametrize("train_options, error", [
    ({"metrics": ("pcc",)}, "unknown metric 'pcc'"),
    ({"top_k": 1}, "top_k_accuracy needs top_k >= 2"),
])
async def test_a_metric_the_metric_actor_cannot_make_ends_the_run(tmp_path, hang_clock, train_options, error):
    config = records_config(tmp_path)  # the bad value set past config's checks: the metric actor meets it
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train_options))
    with trio.fail_after(BOUND):
        with pytest.raises(ConfigError, match=error):
            await train(config)


# --- the CLI: one line and exit status 1 for a FlowError; any other error comes out, never a hang


@pytest.fixture
def cli_run(tmp_path):
    """Runs `flow run` on a records config in a thread (so that a hang fails the test rather than
    hanging it); returns its exit status, or the exception it raised. Restores the log set-up."""
    records = MXNET_FIXTURES / "passthrough.rec"
    toml = tmp_path / "train.toml"
    toml.write_text(f'[data]\ndata_train = "{records}"\nimage_shape = [3, 64, 64]\nnum_classes = 10\n'
                    f'batch_size = 16\ndata_nthreads = 2\n[model]\nnetwork = "mlp"\n'
                    f'[train]\nnum_epochs = 500\n[checkpoint]\nmodel_prefix = "{tmp_path / "model"}"\n')
    logger = logging.getLogger("flow")
    saved = logger.handlers[:], logger.propagate, logger.level

    def run():
        outcome = []

        def target():
            try:
                outcome.append(main(["run", str(toml)]))
            except BaseException as error:
                outcome.append(error)
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(BOUND)
        assert not thread.is_alive(), f"flow run still running after {BOUND} s"
        return outcome[0]

    yield run
    logger.handlers[:], logger.propagate = saved[:2]
    logger.setLevel(saved[2])


def test_cli_prints_an_unknown_metric_as_one_line(monkeypatch, capsys, cli_run):
    load_config = flow.config.load_config

    def with_unknown_metric(*args, **kwargs):  # past config's checks, so that the metric actor meets it
        config = load_config(*args, **kwargs)
        return dataclasses.replace(config, train=dataclasses.replace(config.train, metrics=("pcc",)))
    monkeypatch.setattr(flow.config, "load_config", with_unknown_metric)
    assert cli_run() == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith("flow run: error: ") and "unknown metric 'pcc'; valid: " in last
    assert "Traceback" not in err


def test_cli_prints_an_actors_flow_error_as_one_line(tmp_path, monkeypatch, capsys, cli_run):
    def disk_full(prefix, *args):
        raise FlowError("no space left on device", prefix)
    monkeypatch.setattr(flow.checkpoints, "save_checkpoint", disk_full)
    assert cli_run() == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"flow run: error: {tmp_path / 'model'}: no space left on device"
    assert "Traceback" not in err


def test_cli_lets_any_other_actor_error_out(monkeypatch, cli_run):
    break_mid_run(monkeypatch, "compute", "compute failed mid-run")
    error = cli_run()
    assert isinstance(error, Injected) and str(error) == "compute failed mid-run"
