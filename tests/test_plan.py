"""What a run checks and says at start-up, before it trains: config mistakes that MXNet refuses at
load time, and settings that would otherwise train something else than the user sees."""

import logging
import textwrap
from pathlib import Path

import pytest
import torch

from flow import checkpoints
from flow.cli import main
from flow.config import config_from_dict
from flow.console import log_run
from flow.errors import ConfigError, RecordIOError
from flow.events import NumExamplesBelowRecords, RunStarted
from flow.recordio import RecordReader
from flow.run import open_run, train
from tests.fixtures import MXNET_FIXTURES


def records_config(tmp_path=None, **sections):
    """mlp on MXNet's val.rec (200 records of 64x64, 10 classes), cropped to 32x32: two batches an epoch."""
    raw = {
        "data": {"data_train": str(MXNET_FIXTURES / "val.rec"), "image_shape": [3, 32, 32], "num_classes": 10,
                 "batch_size": 100, "data_nthreads": 1},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 1, "lr": 0.05, "disp_batches": 1},
    }
    if tmp_path is not None:
        raw["checkpoint"] = {"model_prefix": str(tmp_path / "model")}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


@pytest.fixture
def flow_logger():
    """`flow run` points the flow logger at stderr and stops its propagation: put it back afterwards."""
    logger = logging.getLogger("flow")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


# --- data.label_width against the records' labels ----------------------------------------------


@pytest.mark.parametrize("split", ["data_train", "data_val"])
async def test_label_width_that_differs_from_the_records_is_refused_before_training(split):
    multilabel = str(MXNET_FIXTURES / "multilabel.rec")  # 3 labels a record (flag 3)
    config = records_config(data={split: multilabel})
    with pytest.raises(ConfigError, match=r"data\.label_width.*multilabel\.rec.*3 labels") as caught:
        await train(config)
    assert "\n" not in str(caught.value)


async def test_label_width_that_matches_the_records_starts(tmp_path):
    config = records_config(data={"data_train": str(MXNET_FIXTURES / "multilabel.rec"), "label_width": 3})
    async with open_run(config):  # the plan is made on entry; leaving at once trains nothing
        pass


# --- the record files: read once, before training ----------------------------------------------


async def test_each_record_file_is_read_once_and_a_bad_one_fails_before_training(monkeypatch, tmp_path):
    opened = []
    open_reader = RecordReader.__init__

    def counting(reader, path):
        opened.append(Path(path).name)
        open_reader(reader, path)

    monkeypatch.setattr(RecordReader, "__init__", counting)
    await train(records_config(data={"data_val": str(MXNET_FIXTURES / "resized.rec")}))
    assert sorted(opened) == ["resized.rec", "val.rec"]  # the plan's tables; the loaders take them
    (tmp_path / "val.rec").write_bytes((MXNET_FIXTURES / "val.rec").read_bytes()[:5000])
    bad_index = records_config(data={"data_val": str(tmp_path / "val.rec"),
                                     "data_val_idx": str(MXNET_FIXTURES / "val.idx")})
    with pytest.raises(RecordIOError, match=r"val\.rec: at byte \d+: .*val\.idx line \d+ points past the end"):
        async with open_run(bad_index):  # the plan is made on entry
            pytest.fail("the run started")


# --- data.layout = "uint8_nhwc" ----------------------------------------------------------------


async def test_uint8_layout_trains_the_same_weights_as_float32_to_the_bit(tmp_path):
    augmented = {"aug_level": 2, "rgb_std": [58.4, 57.1, 57.4]}  # crop, mirror and colour jitter
    for layout in ("float32_nchw", "uint8_nhwc"):
        config = records_config(tmp_path / layout, data={**augmented, "layout": layout,
                                                         "data_val": str(MXNET_FIXTURES / "val.rec")},
                                train={"num_epochs": 2})
        result = await train(config)
        assert result.updates == 4
    float_params, _ = checkpoints.load_checkpoint(str(tmp_path / "float32_nchw" / "model"), 2)
    uint8_params, _ = checkpoints.load_checkpoint(str(tmp_path / "uint8_nhwc" / "model"), 2)
    assert all(torch.equal(float_params[name], uint8_params[name]) for name in float_params)


# --- model.options ----------------------------------------------------------------------------


async def test_model_options_reach_the_network(tmp_path):
    config = records_config(tmp_path, model={"network": "lenet", "options": {"hidden": 16}})
    await train(config)
    params, _ = checkpoints.load_checkpoint(str(tmp_path / "model"), 1)
    assert params["fullyconnected0.weight"].shape[0] == 16
    assert checkpoints.load_model_spec(str(tmp_path / "model"))["options"] == {"hidden": 16}


# --- checkpoint.load_epoch against train.num_epochs --------------------------------------------


def write_config(tmp_path, num_epochs):
    path = tmp_path / "train.toml"
    path.write_text(textwrap.dedent(f"""
        [data]
        data_train = "{MXNET_FIXTURES / 'val.rec'}"
        image_shape = [3, 32, 32]
        num_classes = 10
        batch_size = 100
        data_nthreads = 1
        [model]
        network = "mlp"
        [train]
        num_epochs = {num_epochs}
        [checkpoint]
        model_prefix = "{tmp_path / 'model'}"
    """))
    return str(path)


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(tmp_path, capsys, flow_logger):
    config = write_config(tmp_path, num_epochs=1)
    assert main(["run", config]) == 0
    capsys.readouterr()
    assert main(["run", config, "--resume"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "flow run: error: checkpoint.load_epoch (1) is train.num_epochs: nothing left to train; "
        "raise train.num_epochs to train more")
    assert checkpoints.saved_epochs(str(tmp_path / "model")) == [1]


def test_load_epoch_past_num_epochs_names_both_keys(tmp_path, capsys, flow_logger):
    config = write_config(tmp_path, num_epochs=1)
    assert main(["run", config, "--set", "checkpoint.load_epoch=3"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "flow run: error: checkpoint.load_epoch (3) is past train.num_epochs (1): nothing to train; "
        "raise train.num_epochs or load an earlier epoch")


# --- data.num_examples against the file --------------------------------------------------------


async def start_up_warnings(config, caplog) -> tuple[list, list[str]]:
    """The warning events a run publishes before it trains (it is left at RunStarted), and the
    console's warning lines for them."""
    caplog.set_level(logging.INFO, logger="flow")
    async with open_run(config) as run:
        console_events = run.events()
        events = []
        async for event in run.events():
            events.append(event)
            if isinstance(event, RunStarted):
                break
    await log_run(console_events)  # the run is over: what it published, then the end
    lines = [record.getMessage() for record in caplog.records
             if record.name == "flow" and record.levelno == logging.WARNING]
    return [event for event in events if isinstance(event, NumExamplesBelowRecords)], lines


async def test_num_examples_below_the_record_count_warns_once(caplog):
    config = records_config(data={"num_examples": 100}, train={"lr_step_epochs": [1]})
    warned, lines = await start_up_warnings(config, caplog)
    assert warned == [NumExamplesBelowRecords(100, 200, str(MXNET_FIXTURES / "val.rec"))]
    [line] = lines
    assert "100" in line and "200 records" in line and "val.rec" in line and "lr schedule" in line


@pytest.mark.parametrize("num_examples", [0, 200])
async def test_num_examples_unset_or_equal_to_the_record_count_does_not_warn(caplog, num_examples):
    assert await start_up_warnings(records_config(data={"num_examples": num_examples}), caplog) == ([], [])
