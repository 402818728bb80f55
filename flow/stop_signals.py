"""SIGINT and SIGTERM as a run's stop request, for `flow run`.

The first one asks the run to stop after its current step and save a checkpoint where it stands,
mid-epoch too (`Run.stop`, flow/fit.py), so that `--resume` loses nothing. A second SIGINT (or
SIGTERM) does not wait for that: it cancels the run at once. A checkpoint being written then is
finished first and every checkpoint file is written atomically, so the newest complete checkpoint
stays intact either way.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import trio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_signal_receiver():
    """`trio.open_signal_receiver(*STOP_SIGNALS)`, or, off the main thread (which alone receives
    signals: a program that runs the CLI in a thread of its own), a context giving None."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return trio.open_signal_receiver(*STOP_SIGNALS)


class SignalStop:
    """Watches for the stop signals (from `stop_signal_receiver()`) and stops the
    run given to `attach`; `cancel_scope` is what a second signal cancels. `signal`: the first one
    received, which the process's exit status reports (None: none came)."""

    def __init__(self, cancel_scope: trio.CancelScope):
        self.cancel_scope = cancel_scope
        self.signal: int | None = None
        self._run = None

    def attach(self, run) -> None:
        """The run to stop, once it exists (a signal that came before stops it now)."""
        self._run = run
        if self.signal is not None:
            run.stop()

    async def watch(self, signals) -> None:
        async for signum in signals:
            if self.signal is None:
                self.signal = signum
                if self._run is not None:
                    self._run.stop()
            else:
                self.cancel_scope.cancel()
