"""Ctrl-C at any moment of `flow run` ends it with exit status 130 and the one line "flow run: interrupted".

Issue 15: a SIGINT while torch imported could raise KeyboardInterrupt in the Python code that
torch's C++ initialization calls, which cannot unwind through that C++: `terminate called ...`,
exit 134. A SIGINT while the CLI imported its commands gave a traceback, and a second one while
the process shut down killed it (exit -2).
"""

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT

RUNS = 20
AT_ONCE = 4  # processes at a time: each spends ~2 s of CPU importing torch
LATEST = 5.0  # the latest SIGINT, in seconds after flow's own code starts: through the imports (~2 s),
# the model build, the first batches and several epoch ends (checkpoint, validation) after them
SECOND_EVERY = 4  # every 4th run gets a second SIGINT while it shuts down
# The example trains on its 500-image validation set: an epoch, with its checkpoint and its
# validation, every second or so; 100 epochs, so that no run ends before its SIGINT.
QUICK_EPOCHS = ["--set", "data.data_train='data/shapes_val.rec'", "--set", "train.num_epochs=100"]
MXNET_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")

# Sends SIGINT the first time one of torch's C++ init functions (torch._C._*_init) runs Python
# code (its imports), then runs the CLI.
INTERRUPT_INSIDE_TORCH_INIT = """
import os, signal, sys

c_calls = []

def profile(frame, event, arg):
    if event == "c_call":
        c_calls.append(arg)
    elif event in ("c_return", "c_exception") and c_calls:
        c_calls.pop()
    elif (event == "call" and c_calls and getattr(c_calls[-1], "__module__", None) == "torch._C"
          and c_calls[-1].__name__.endswith("_init")):
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGINT)

sys.setprofile(profile)
from flow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _sigint_default() -> None:
    """A test run in the background inherits SIGINT ignored; the runs under test must not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_inside_torch_initialization_exits_130():
    """The issue's abort, made certain: before the fix, torch._C._c10d_init's import raised
    KeyboardInterrupt and the process aborted (exit 134)."""
    # A bad key: without a SIGINT the run stops with an error once torch is imported.
    done = subprocess.run([sys.executable, "-c", INTERRUPT_INSIDE_TORCH_INIT, "run", "examples/train.toml",
                           "--set", "train.lrr=0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=_sigint_default)
    if done.returncode == 1 and "unknown key train.lrr" in done.stderr:
        pytest.skip("this torch's C++ initialization runs no Python code: no SIGINT was sent")
    assert (done.returncode, done.stderr.splitlines()) == (130, ["flow run: interrupted"])


def _flow_code_running(pid: int) -> bool:
    """Whether numpy is loaded: flow's CLI imports it first thing, so a SIGINT from now on lands in
    flow's code rather than in the interpreter's start-up (site), which no program can handle."""
    try:
        return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # it has ended already
        return False


class _Interrupted:
    """One `flow run` of the example, sent SIGINT `delay` seconds after flow's code starts (and, with
    `second_delay`, again that much later)."""

    def __init__(self, directory: Path, delay: float, second_delay: float | None):
        directory.mkdir()
        self.delays = [delay] if second_delay is None else [delay, delay + second_delay]
        self.due: list[float] | None = None  # when to send each SIGINT, known once flow's code runs
        self.stderr_path = directory / "stderr"
        with open(self.stderr_path, "wb") as stderr:  # a file, not a pipe: nothing to drain meanwhile
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flow", "run", "examples/train.toml", *QUICK_EPOCHS,
                 "--set", f"checkpoint.model_prefix='{directory / 'shapes'}'"],
                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_sigint_default)

    def step(self) -> None:
        if self.due is None:
            if _flow_code_running(self.process.pid):
                started = time.monotonic()
                self.due = [started + delay for delay in self.delays]
        elif self.due and time.monotonic() >= self.due[0]:
            self.process.send_signal(signal.SIGINT)
            self.due.pop(0)

    def outcome(self) -> tuple[int, list[str]] | None:
        """(exit status, stderr without its log lines) once the run has ended."""
        if self.process.poll() is None:
            return None
        lines = self.stderr_path.read_text().splitlines()
        return self.process.returncode, [line for line in lines if not MXNET_LOG_LINE.match(line)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_sigint_at_random_times_exits_130_with_one_line(tmp_path):
    rng = random.Random(15)
    plans = [(rng.uniform(0, LATEST), rng.uniform(0, 0.5) if index % SECOND_EVERY == SECOND_EVERY - 1 else None)
             for index in range(RUNS)]
    waiting = list(enumerate(plans))
    running: dict[int, _Interrupted] = {}
    outcomes = {}
    deadline = time.monotonic() + 300
    try:
        while waiting or running:
            assert time.monotonic() < deadline, f"runs {sorted(running)} did not end"
            while waiting and len(running) < AT_ONCE:
                index, (delay, second_delay) = waiting.pop(0)
                running[index] = _Interrupted(tmp_path / str(index), delay, second_delay)
            for index, run in list(running.items()):
                run.step()
                if (outcome := run.outcome()) is not None:
                    outcomes[index] = outcome
                    del running[index]
            time.sleep(0.01)
    finally:
        for run in running.values():
            run.process.kill()
            run.process.wait()

    failed = {index: (plans[index], outcomes[index]) for index in range(RUNS)
              if outcomes[index] != (130, ["flow run: interrupted"])}
    assert not failed, f"{len(failed)} of {RUNS} runs (plan (delay, second delay): (status, stderr)): {failed}"



# 63 batches an epoch (the 500 validation images, batch 8), no validation, a small mlp: a stop
# lands mid-epoch, and the runs cost little more than their start-up.
STOPPABLE = ["--set", "data.data_train='data/shapes_val.rec'", "--set", "data.data_val=''", "--set",
             "data.batch_size=8", "--set", "train.disp_batches=2", "--set", "train.num_epochs=2",
             "--set", "model.network='mlp'", "--set", "train.lr=0.005"]


def _flow_run(prefix: Path, stderr_path: Path, *extra: str) -> subprocess.Popen:
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "flow", "run", "examples/train.toml", *STOPPABLE,
                                 "--set", f"checkpoint.model_prefix='{prefix}'", *extra],
                                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_sigint_default)


def _signal_when_logged(process: subprocess.Popen, stderr_path: Path, line: str, signals: list[int]) -> None:
    """Sends `signals` (0.05 s apart) once the run's log has `line`."""
    deadline = time.monotonic() + 120
    while line not in stderr_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
        time.sleep(0.01)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)


def _outcome(process: subprocess.Popen, stderr_path: Path) -> tuple[int, list[str]]:
    process.wait(timeout=120)
    lines = stderr_path.read_text().splitlines()
    return process.returncode, [line for line in lines if not MXNET_LOG_LINE.match(line)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGTERM and preexec_fn")
def test_stops_mid_epoch_on_sigterm_and_sigint_resume_bit_for_bit_and_a_second_sigint_exits_at_once(tmp_path):
    """SIGTERM in epoch 0, then SIGINT in the resumed run's epoch 1: each saves a mid-epoch checkpoint
    and exits 143 / 130 with one line, and the run resumed from them ends with an uninterrupted
    run's weights, bit for bit. Beside them, a run sent two SIGINTs exits at once, 130, its
    checkpoints whole."""
    import torch

    from flow import checkpoints

    whole = _flow_run(tmp_path / "whole", tmp_path / "whole.err")
    split = _flow_run(tmp_path / "split", tmp_path / "split.err")
    twice = _flow_run(tmp_path / "twice", tmp_path / "twice.err", "--set", "train.num_epochs=100")
    for signum, epoch, outcome in ((signal.SIGTERM, 0, (143, ["flow run: terminated"])),
                                   (signal.SIGINT, 1, (130, ["flow run: interrupted"]))):
        _signal_when_logged(split, tmp_path / "split.err", f"Epoch[{epoch}] Batch [2-4]", [signum])
        assert _outcome(split, tmp_path / "split.err") == outcome
        resumed, _ = checkpoints.newest_checkpoint(str(tmp_path / "split"))
        assert (resumed.epoch, resumed.batch > 0) == (epoch, True), "saved mid-epoch"
        split = _flow_run(tmp_path / "split", tmp_path / "split.err", "--resume")
        if epoch == 0:
            _signal_when_logged(twice, tmp_path / "twice.err", "Epoch[1] Batch [2-4]", [signal.SIGINT] * 2)
            second = time.monotonic()
            assert _outcome(twice, tmp_path / "twice.err") == (130, ["flow run: interrupted"])
            assert time.monotonic() - second < 10  # the interpreter's and torch's teardown, no more training
            assert checkpoints.newest_checkpoint(str(tmp_path / "twice"))[1] == []  # what was written verifies
    assert _outcome(split, tmp_path / "split.err") == (0, [])
    assert _outcome(whole, tmp_path / "whole.err") == (0, [])
    whole_params = checkpoints.load_checkpoint(str(tmp_path / "whole"), 2)[0]
    split_params = checkpoints.load_checkpoint(str(tmp_path / "split"), 2)[0]
    assert all(torch.equal(whole_params[name], split_params[name]) for name in whole_params)
