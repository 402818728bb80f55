"""`flow score`: the Validation- lines `flow run` printed for a checkpoint, printed again from it."""

import contextlib
import io
import re

import pytest

from flow.cli import main
from tests.fixtures import MXNET_FIXTURES, repacked_rec

TIME = re.compile(r"^\S+ \S+ ")  # the logger's date and time


def write_config(folder, num_epochs=2):
    path = folder / "train.toml"
    path.write_text(f"""
[data]
data_train = "{MXNET_FIXTURES / 'resized.rec'}"
data_val = "val_a.rec"
image_shape = [3, 32, 32]
num_classes = 10
batch_size = 16
data_nthreads = 1
[model]
network = "mlp"
[train]
num_epochs = {num_epochs}
lr = 0.05
metrics = ["accuracy", "ce"]
disp_batches = 100
seed = 1
[checkpoint]
model_prefix = "model"
""")
    return path


def validation_lines(text):
    return [TIME.sub("", line) for line in text.splitlines() if "Validation-" in line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch `flow run` validated on val_a.rec (45 records, the last batch padded): its folder,
    config and the Validation lines it printed."""
    folder = tmp_path_factory.mktemp("trained")
    repacked_rec(folder / "val_a.rec", 0, 45)
    repacked_rec(folder / "val_b.rec", 100, 37)
    config = write_config(folder)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:  # flow run logs to the sys.stderr it finds
        assert main(["run", str(config)]) == 0
    return folder, config, validation_lines(stderr.getvalue())


def score_lines(capfd, argv):
    assert main(["score", *argv]) == 0
    return validation_lines(capfd.readouterr().err)


def test_score_prints_the_validation_lines_flow_run_printed_for_each_checkpoint(trained, capfd):
    folder, config, printed = trained
    assert printed[0].startswith("Epoch[0] Validation-accuracy=") and len(printed) == 4
    assert score_lines(capfd, [str(config), "--load-epoch", "1"]) == printed[:2]
    assert score_lines(capfd, [str(config), "--load-epoch", "2"]) == printed[2:]


def test_score_on_another_validation_file_prints_what_a_run_validated_on_it_printed(trained, capfd, tmp_path):
    folder, config, _ = trained
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace('"val_a.rec"', f'"{folder / "val_b.rec"}"')
                     .replace('"model"', f'"{tmp_path / "other"}"').replace("num_epochs = 2", "num_epochs = 1"))
    assert main(["run", str(other)]) == 0
    printed = validation_lines(capfd.readouterr().err)
    assert score_lines(capfd, [str(config), "--load-epoch", "1", "--set", 'data.data_val="val_b.rec"']) == printed
    assert score_lines(capfd, [str(config), "--load-epoch", "1"]) != printed


@pytest.mark.parametrize("argv, message", [
    (["--load-epoch", "7"], r"model-0007\.params: no such checkpoint file"),
    ([], r"checkpoint\.load_epoch: which checkpoint to load \(--load-epoch N, N >= 1\), got 0"),
    (["--load-epoch", "1", "--image-shape", "3,28,28"],
     r"data\.image_shape: the model of .*model-model\.json takes \[3, 32, 32\] images"),
])
def test_a_checkpoint_it_cannot_score_is_one_line_and_exit_1(trained, capfd, argv, message):
    folder, config, _ = trained
    assert main(["score", str(config), *argv]) == 1
    error = capfd.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.match(r"flow score: error: .*" + message, error), error
