"""The `flow` command line: its help, fit.py's flags, and what `flow run` logs first."""

import logging
import os

import pytest

import flow.run_command
from flow.cli import build_parser, main
from flow.config import load_config


def write_config(folder):
    folder.mkdir(exist_ok=True)
    path = folder / "train.toml"
    path.write_text('[data]\ndata_train = "train.rec"\nbatch_size = 32\n[train]\nlr = 0.5\n')
    return path


def help_text(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_opens_with_what_flow_does_and_the_common_commands(capsys):
    text = help_text(["--help"], capsys)
    first_line = text.splitlines()[0]
    assert first_line.startswith("flow trains image classifiers") and "fit.py" in first_line
    commands = text[:text.index("positional arguments")]
    for example in ["flow run train.toml", "flow run train.toml --resume", "flow test-io train.toml",
                    "flow im2rec", "flow inspect", "flow events"]:
        assert f"\n  {example}" in commands
    assert "add_arguments" not in text  # the developers' note is no part of the help
    assert "`flow COMMAND --help`" in text.splitlines()[-2]


def test_flow_alone_prints_the_help(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("flow trains image classifiers")


def test_fit_py_flags_are_set_overrides_in_command_line_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "config")
    args = build_parser().parse_args([
        "run", str(path), "--lr", "0.01", "--set", "train.lr=0.02", "--lr-step-epochs", "30,60", "--gpus", "0,1",
        "--load-epoch", "3", "--model-prefix", "runs/m", "--batch-size", "64", "--image-shape", "3,28,28",
        "--network", "resnet", "--num-layers", "18", "--kv-store", "device", "--top-k", "5"])
    assert args.set[:3] == ["train.lr=0.01", "train.lr=0.02", 'train.lr_step_epochs="30,60"']
    config = load_config(path, args.set)
    assert config.train.lr == 0.02  # the later one
    assert config.train.lr_step_epochs == (30, 60) and config.train.devices == ("cuda:0", "cuda:1")
    assert config.checkpoint.load_epoch == 3
    assert config.checkpoint.model_prefix == str(tmp_path / "runs" / "m")  # from the working directory
    assert config.data.data_train == str(tmp_path / "config" / "train.rec")  # the file's own, from the file
    assert config.data.batch_size == 64 and config.data.image_shape == (3, 28, 28)
    assert (config.model.network, config.model.num_layers) == ("resnet", 18)
    assert config.train.kv_store == "device" and config.train.top_k == 5

    one_step = load_config(path, build_parser().parse_args(["run", str(path), "--lr-step-epochs", "30"]).set)
    assert one_step.train.lr_step_epochs == (30,)
    no_gpus = load_config(path, build_parser().parse_args(["run", str(path), "--gpus", ""]).set)
    assert no_gpus.train.devices == ("cpu",)


FIT_PY_FLAGS = {
    "--load-epoch": "checkpoint.load_epoch", "--model-prefix": "checkpoint.model_prefix",
    "--num-epochs": "train.num_epochs", "--lr": "train.lr", "--batch-size": "data.batch_size",
    "--gpus": "train.devices", "--kv-store": "train.kv_store", "--network": "model.network",
    "--num-layers": "model.num_layers", "--data-train": "data.data_train", "--data-val": "data.data_val",
    "--disp-batches": "train.disp_batches", "--lr-factor": "train.lr_factor",
    "--lr-step-epochs": "train.lr_step_epochs", "--optimizer": "train.optimizer", "--mom": "train.mom",
    "--wd": "train.wd", "--top-k": "train.top_k", "--num-classes": "data.num_classes",
    "--num-examples": "data.num_examples", "--image-shape": "data.image_shape", "--monitor": "train.monitor",
}


def test_run_help_lists_fit_py_flags_in_their_group(capsys):
    text = help_text(["run", "--help"], capsys)
    group = text[text.index("fit.py's flags:"):]
    for flag, key in FIT_PY_FLAGS.items():
        assert f"\n  {flag} " in group and f"--set {key}=" in group


def test_test_io_takes_the_flags_of_the_keys_it_reads(tmp_path, capsys):
    path = write_config(tmp_path)
    args = build_parser().parse_args(["test-io", str(path), "--batch-size", "16", "--num-epochs", "2"])
    assert args.set == ["data.batch_size=16", "train.num_epochs=2"]
    with pytest.raises(SystemExit):
        main(["test-io", str(path), "--lr", "0.1"])
    assert "flow test-io: error: no option --lr; use --set train.lr=0.1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [
    (["--data-nthreads", "8"], "flow run: error: no option --data-nthreads; use --set data.data_nthreads=8"),
    (["--max-random-h=36"], "no option --max-random-h; use --set data.max_random_h=36"),
    (["--random-mirror", "1"], "use --set data.random_mirror=true"),
    (["--pretrained-model", "models/resnet"], "use --set model.pretrained_prefix=models/resnet"),
    (["--test-io", "1"], "use `flow test-io CONFIG`"),
])
def test_a_fit_py_flag_flow_lacks_names_the_set_to_use(tmp_path, capsys, argv, hint):
    with pytest.raises(SystemExit) as exited:
        main(["run", str(write_config(tmp_path)), *argv])
    assert exited.value.code == 2
    assert hint in capsys.readouterr().err


def test_run_logs_its_arguments_one_short_line_per_section(tmp_path, monkeypatch, capsys):
    logger = logging.getLogger("flow")  # `flow run` points it at this test's stderr: put it back afterwards
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    async def no_training(config):
        pass

    monkeypatch.setattr(flow.run_command, "train_with_console", no_training)
    assert main(["run", str(write_config(tmp_path)), "--num-epochs", "3", "--gpus", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(" start with arguments"))
    messages = [line.split(" ", 2)[2] for line in lines[start + 1:]]  # without the date and time
    assert [message[:message.index("]") + 1] for message in messages if message.startswith("[")] == [
        "[data]", "[model]", "[train]", "[checkpoint]"]
    assert all(len(message) < 100 for message in messages)
    text = "\n".join(messages)
    assert f"data_train={os.path.join(str(tmp_path), 'train.rec')!r}" in text and "batch_size=32" in text
    assert "num_epochs=3" in text and "lr=0.5" in text and "devices=('cuda:0',)" in text
    assert "network='lenet'" in text  # always shown, default or not
    assert "pad_value" not in text and "rgb_std" not in text  # defaults are left out
