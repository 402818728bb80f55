"""The examples run as a user runs them: the README's first command, and the embedding example."""

import re
import subprocess
import sys

import torch

from tests.fixtures import REPO_ROOT

STATED_ACCURACY = 0.95  # README: the example reaches this validation accuracy


def run(*command, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_flow_run_example_reaches_its_stated_accuracy_and_resumes(tmp_path):
    prefix = f"checkpoint.model_prefix='{tmp_path / 'shapes'}'"
    done = run("-m", "flow", "run", "examples/train.toml", "--set", prefix)
    assert done.returncode == 0, done.stderr
    accuracies = [float(value) for value in re.findall(r"Epoch\[\d+\] Validation-accuracy=([.\d]+)", done.stderr)]
    assert len(accuracies) == 4 and accuracies[-1] >= STATED_ACCURACY
    assert re.search(r"Epoch\[3\] Time cost=[.\d]+", done.stderr)
    assert sorted(path.name for path in tmp_path.glob("shapes-*.params")) == ["shapes-0003.params", "shapes-0004.params"]

    resumed = run("-m", "flow", "run", "examples/train.toml", "--set", prefix, "--set", "train.num_epochs=5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Epoch[4] Train-accuracy=" in resumed.stderr and "Epoch[3] Train" not in resumed.stderr


def test_flow_run_bad_config_is_one_line_and_exit_1(tmp_path):
    done = run("-m", "flow", "run", "examples/train.toml", "--set", "train.lrr=0.1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "flow run: error: examples/train.toml: unknown key train.lrr; did you mean train.lr?"]


def test_embed_example_prints_its_own_progress(tmp_path):
    done = run("examples/embed.py", "--set", "train.num_epochs=1", "--set",
               f"checkpoint.model_prefix='{tmp_path / 'embed'}'")
    assert done.returncode == 0, done.stderr
    assert re.search(r"epoch 0 validation accuracy 0\.\d+", done.stdout)
    assert "finished: 1 epochs, 32 updates" in done.stdout
    assert (tmp_path / "embed-events.msgpack").exists()


def test_flow_run_stops_early_keeps_the_best_checkpoint_and_logs_csv(tmp_path):
    # min_delta 1: no epoch improves cross-entropy by more, so patience 1 stops the run after Epoch[1]
    done = run("-m", "flow", "run", "examples/train.toml", "--set", f"checkpoint.model_prefix='{tmp_path / 's'}'",
               "--set", "checkpoint.best_metric='ce'", "--set", "train.early_stop_patience=1",
               "--set", "train.early_stop_min_delta=1.0", "--set", f"log.csv_file='{tmp_path / 'log.csv'}'")
    assert done.returncode == 0, done.stderr
    entropies = [float(v) for v in re.findall(r"Epoch\[\d+\] Validation-cross-entropy=([.\d]+)", done.stderr)]
    assert len(entropies) == 2 and "Epoch[2]" not in done.stderr
    assert re.search(r"Epoch\[1\] Early stop: cross-entropy has not improved by more than 1 for 1 epochs "
                     r"\(best [.\d]+ at Epoch\[0\]\)", done.stderr)
    best = entropies.index(min(entropies))
    assert f'Saved best checkpoint to "{tmp_path / "s"}-best.params" (Epoch[{best}] cross-entropy=' in done.stderr
    assert torch.load(tmp_path / "s-best.states", weights_only=True)["epoch"] == best + 1
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 2
