"""The TensorBoard logger: its event file read back with tensorboard's own reader holds the run's figures."""

import errno

import numpy as np
import pytest

from flow.errors import FlowError
from flow.events import BatchEnd, EpochEnd, RunStarted, Validation
from flow.run import open_run
from flow.tensorboard_log import log_tensorboard
from tests.test_run import small_config, synthetic_data

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(log_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows them."""
    accumulator = event_accumulator.EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


async def test_the_event_file_holds_the_runs_figures(tmp_path):
    log_dir = tmp_path / "tb"
    config = small_config(tmp_path, train={"metrics": ["accuracy", "ce"]}, log={"tensorboard_dir": str(log_dir)})
    async with open_run(config, train_data=synthetic_data(), val_data=synthetic_data(epoch_batches=2, seed=9)) as run:
        events = [event async for event in run.events()]
    scalars = read_scalars(log_dir)
    f32 = np.float32  # TensorBoard keeps scalars as float32
    ends = [event for event in events if isinstance(event, EpochEnd)]
    validations = [event for event in events if isinstance(event, Validation)]
    batches = [event for event in events if isinstance(event, BatchEnd)]
    per_epoch = next(event for event in events if isinstance(event, RunStarted)).batches_per_epoch
    assert per_epoch == 6
    expected = {
        "train/accuracy": [(e.epoch, f32(e.metrics[0][1])) for e in ends],
        "train/cross-entropy": [(e.epoch, f32(e.metrics[1][1])) for e in ends],
        "validation/accuracy": [(v.epoch, f32(v.metrics[0][1])) for v in validations],
        "validation/cross-entropy": [(v.epoch, f32(v.metrics[1][1])) for v in validations],
        "lr": [(e.epoch, f32(0.1)) for e in ends],
        "epoch_seconds": [(e.epoch, f32(e.seconds)) for e in ends],
        "samples_per_second": [(e.epoch, f32(e.samples / e.seconds)) for e in ends],
        "batch/accuracy": [(b.epoch * per_epoch + b.batch, f32(b.metrics[0][1])) for b in batches],
        "batch/cross-entropy": [(b.epoch * per_epoch + b.batch, f32(b.metrics[1][1])) for b in batches],
        "batch/samples_per_second": [(b.epoch * per_epoch + b.batch, f32(b.samples_per_second)) for b in batches],
    }
    assert scalars == expected
    assert [step for step, _ in scalars["batch/accuracy"]] == [2, 4, 8, 10]


async def test_a_full_disk_is_a_flow_error_naming_the_folder(tmp_path, monkeypatch):
    from tensorboard.summary.writer import record_writer

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(record_writer.RecordWriter, "write", disk_full)

    async def events():
        yield RunStarted(0, 1, ["cpu"], "local", 1, 1)
        yield EpochEnd(0, [("accuracy", 0.5)], 1.0, 10, 1, 0.1)

    with pytest.raises(FlowError, match=f"^{tmp_path}: cannot write TensorBoard events: No space left on device$"):
        await log_tensorboard(events(), str(tmp_path))
