"""The CSV logger: one row per epoch, equal to the run's events; `flow events --csv` makes the same rows."""

import csv
import errno
import io

import pytest

import flow.atomic
from flow.cli import main
from flow.csv_log import EpochRows
from flow.errors import FlowError
from flow.event_log import read_events
from flow.events import BatchEnd, EpochEnd, RunFailed, RunFinished, Validation
from flow.run import open_run
from tests.test_run import small_config, synthetic_data


def parsed(text):
    return list(csv.DictReader(io.StringIO(text)))


def assert_rows_equal_the_events(text, events):
    """Each row holds its epoch's EpochEnd and Validation figures, to the bit, and nothing else."""
    epoch_ends = {event.epoch: event for event in events if isinstance(event, EpochEnd)}
    validations = {event.epoch: event for event in events if isinstance(event, Validation)}
    rows = parsed(text)
    assert [int(row["epoch"]) for row in rows] == sorted(epoch_ends)
    for row in rows:
        end, validation = epoch_ends[int(row["epoch"])], validations.get(int(row["epoch"]))
        expected = {f"train-{name}": value for name, value in end.metrics}
        expected.update({f"validation-{name}": value for name, value in validation.metrics} if validation else {})
        expected.update(lr=end.lr, seconds=end.seconds, samples_per_second=end.samples / end.seconds)
        assert {key: float(value) for key, value in row.items() if key != "epoch"} == expected


def test_rows_hold_each_epochs_figures_in_column_order_and_a_rerun_epoch_starts_afresh():
    rows = EpochRows()
    events = [EpochEnd(0, [("accuracy", 0.5), ("cross-entropy", 1.25)], 2.0, 100, 5, 0.1),
              BatchEnd(1, 2, 10.0, [("accuracy", 0.1)], 0.1),  # no row of its own
              Validation(0, [("accuracy", 0.6), ("cross-entropy", 1.0)], 20),
              EpochEnd(1, [("accuracy", 0.7), ("cross-entropy", 0.75)], 4.0, 100, 5, 1 / 3),
              Validation(1, [("accuracy", 0.8), ("cross-entropy", 0.5)], 20),
              EpochEnd(0, [("accuracy", 0.55), ("cross-entropy", 1.5)], 1.0, 100, 5, 0.1)]  # a resumed run's
    assert [rows.add(event) for event in events] == [True, False, True, True, True, True]
    assert rows.text().splitlines() == [
        "epoch,train-accuracy,train-cross-entropy,validation-accuracy,validation-cross-entropy,lr,seconds,"
        "samples_per_second",
        "0,0.55,1.5,,,0.1,1.0,100.0",
        "1,0.7,0.75,0.8,0.5,0.3333333333333333,4.0,25.0"]


async def test_the_csv_file_rows_equal_the_runs_events_and_flow_events_csv_prints_them(tmp_path, capsys):
    path = tmp_path / "log.csv"
    config = small_config(tmp_path, train={"num_epochs": 3, "metrics": ["accuracy", "ce"]},
                          log={"csv_file": str(path)})
    async with open_run(config, train_data=synthetic_data(), val_data=synthetic_data(epoch_batches=2, seed=9)) as run:
        events = [event async for event in run.events()]
    assert_rows_equal_the_events(path.read_text(), events)
    assert parsed(path.read_text())[0].keys() >= {"validation-cross-entropy", "train-accuracy"}
    assert main(["events", str(tmp_path / "model-events.msgpack"), "--csv"]) == 0
    assert capsys.readouterr().out == path.read_text()


async def test_a_resumed_run_keeps_the_rows_before_its_first_epoch(tmp_path):
    path = tmp_path / "log.csv"
    data = {"train_data": synthetic_data(), "val_data": synthetic_data(epoch_batches=2, seed=9)}
    async with open_run(small_config(tmp_path, train={"num_epochs": 2}, log={"csv_file": str(path)}), **data) as run:
        first = [event async for event in run.events()]
    resumed_config = small_config(tmp_path, train={"num_epochs": 3}, checkpoint={"load_epoch": 1},
                                  log={"csv_file": str(path)})
    async with open_run(resumed_config, **data) as run:
        resumed = [event async for event in run.events()]
    first_epoch = [event for event in first if getattr(event, "epoch", None) == 0]
    assert_rows_equal_the_events(path.read_text(), first_epoch + resumed)
    assert [row["epoch"] for row in parsed(path.read_text())] == ["0", "1", "2"]


@pytest.fixture
def full_disk_for_csv(monkeypatch):
    """Writing a .csv meets a full disk (OSError ENOSPC); other files are written."""
    real_open = open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, *args, **kwargs):
        file = real_open(path, *args, **kwargs)
        return FullDisk(file) if str(path).endswith(".csv.tmp") else file
    monkeypatch.setattr(flow.atomic, "open", fake_open, raising=False)


async def test_a_logger_that_fails_ends_the_run_with_its_error(tmp_path, full_disk_for_csv):
    path = tmp_path / "log.csv"
    config = small_config(tmp_path, train={"num_epochs": 50}, log={"csv_file": str(path)})
    with pytest.raises(FlowError, match=f"^{path}: cannot write: No space left on device$"):
        async with open_run(config, train_data=synthetic_data()) as run:
            events = [event async for event in run.events()]
    assert isinstance(events[-1], RunFailed) and events[-1].message == f"{path}: cannot write: No space left on device"
    assert not any(isinstance(event, RunFinished) for event in events)
    assert len([event for event in events if isinstance(event, EpochEnd)]) < 5  # stopped at the first row, not run on
    assert not path.exists() and not (tmp_path / "log.csv.tmp").exists()
    assert isinstance(read_events(tmp_path / "model-events.msgpack")[-1], RunFailed)


def test_flow_run_with_a_failing_logger_is_one_error_line(tmp_path, capsys, full_disk_for_csv, monkeypatch):
    import logging
    logger = logging.getLogger("flow")  # `flow run` points it at this test's stderr: put it back afterwards
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    path = tmp_path / "log.csv"
    code = main(["run", "examples/train.toml", "--set", f"checkpoint.model_prefix='{tmp_path / 'shapes'}'",
                 "--set", f"log.csv_file='{path}'", "--set", "train.num_epochs=1"])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"flow run: error: {path}: cannot write: No space left on device"
