"""`flow test-io`: the loader alone, timed, with fit.py's test-io lines and a per-epoch summary."""

import re

import pytest
import torch

from flow.cli import main
from flow.config import config_from_dict
from flow.io_speed import measure, steady_line
from tests.fixtures import MXNET_FIXTURES

BATCH_LINE = re.compile(r"^Batch \[(\d+)\]\tSpeed: \d+\.\d\d samples/sec$")
EPOCH_LINE = re.compile(r"^test-io: epoch (\d+): (\d+) samples in \d+\.\d{3} s, \d+\.\d\d samples/sec$")
STEADY_LINE = re.compile(r"^test-io: steady \d+\.\d\d samples/sec over epochs (\S+)$")


def write_config(tmp_path, data_train=MXNET_FIXTURES / "train.rec", data=""):
    path = tmp_path / "train.toml"
    train_line = f'data_train = "{data_train}"' if data_train else ""
    path.write_text(f"""
[data]
{train_line}
image_shape = "3,64,64"
batch_size = 100
data_nthreads = 2
{data}
[train]
num_epochs = 2
disp_batches = 3
""")
    return path


def test_prints_batch_speed_epoch_and_steady_lines(tmp_path, capsys):
    assert main(["test-io", str(write_config(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    batch_lines = [BATCH_LINE.match(line) for line in lines if line.startswith("Batch")]
    assert [int(match.group(1)) for match in batch_lines] == [2, 5, 2, 5]  # 8 batches an epoch, every 3rd
    epoch_lines = [EPOCH_LINE.match(line) for line in lines if line.startswith("test-io: epoch")]
    assert [(match.group(1), match.group(2)) for match in epoch_lines] == [("0", "800"), ("1", "800")]
    assert STEADY_LINE.match(lines[-1]).group(1) == "1"
    assert len(lines) == 4 + 2 + 1


def test_set_overrides_the_config(tmp_path, capsys):
    path = write_config(tmp_path)
    args = ["test-io", str(path), "--set", "data.batch_size=400", "--set", "train.num_epochs=3",
            "--set", "train.disp_batches=1"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(1 for line in lines if BATCH_LINE.match(line)) == 2 * 3
    assert STEADY_LINE.match(lines[-1]).group(1) == "1-2"


def test_a_config_error_is_one_line_and_status_1(tmp_path, capsys):
    assert main(["test-io", str(write_config(tmp_path, data_train=None))]) == 1
    assert capsys.readouterr().err.strip() == "flow test-io: error: data.data_train: no record file given"


def test_a_corrupt_file_fails_with_the_loader_error(tmp_path, capsys):
    broken = tmp_path / "broken.rec"
    broken.write_bytes((MXNET_FIXTURES / "train.rec").read_bytes()[:5000])  # its index points past the end
    path = write_config(tmp_path, data_train=broken, data=f'data_train_idx = "{MXNET_FIXTURES / "train.idx"}"')
    assert main(["test-io", str(path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("flow test-io: error: ") and "broken.rec" in error and "past the end" in error


def test_gpu_devices_time_the_pinned_uint8_loader_and_need_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["test-io", str(write_config(tmp_path)), "--set", 'train.devices=["cuda:0"]']) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("flow test-io: error: train.devices: ['cuda:0'] on a machine without a CUDA GPU")
    assert len(error.splitlines()) == 1


async def test_measure_returns_samples_and_seconds_per_epoch():
    config = config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "val.rec"), "image_shape": "3,64,64", "batch_size": 64,
                 "data_nthreads": 2, "last_batch": "discard"},
        "train": {"num_epochs": 3, "disp_batches": 2}})
    lines = []
    epochs = await measure(config, lines.append)
    assert [samples for samples, _ in epochs] == [192, 192, 192]
    assert all(seconds > 0 for _, seconds in epochs)
    assert sum(1 for line in lines if BATCH_LINE.match(line)) == 3  # batch 1 of each epoch
    assert await measure(config) and len(lines) == 3 + 3


async def test_benchmark_mode_needs_no_records():
    config = config_from_dict({"data": {"benchmark": True, "image_shape": "3,16,16", "batch_size": 8,
                                        "num_examples": 32},
                               "train": {"num_epochs": 1}})
    assert await measure(config) == [(32, pytest.approx(0.0, abs=10))]


def test_steady_line_skips_the_first_epoch():
    assert steady_line([(100, 1.0), (100, 0.5), (100, 0.25)]) == "test-io: steady 300.00 samples/sec over epochs 1-2"
    assert steady_line([(100, 2.0)]) == "test-io: steady 50.00 samples/sec over epochs 0"
