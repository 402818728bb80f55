"""An exception from the user's own code (the model, the loss, a custom data source, a network
factory) as one line: what it raised, where in that code, and when in the run.

    the model raised ZeroDivisionError: division by zero (nets/mine.py:12; training Epoch[3] Batch[5])

"Where" is the innermost frame of the traceback outside flow, torch, trio and Python's standard
library: the user's line that called into them (a shape error torch raises names the user's layer
call). The exception itself stays the `__cause__` of the UserCodeError, so `flow --debug` and
any traceback show it whole.
"""

from __future__ import annotations

import functools
import os
import sysconfig
import traceback

from flow.errors import UserCodeError


def user_code_error(error: BaseException, what: str, when: str) -> UserCodeError:
    """`error`, raised by `what` ("the model", "the loss", ...) `when` ("training Epoch[3] Batch[5]"), as one line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    raised = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    where = user_frame(error)
    return UserCodeError(f"{what} raised {raised} ({where + '; ' if where else ''}{when})")


def user_frame(error: BaseException) -> str | None:
    """`file:line` of the innermost frame of `error`'s traceback in the user's code (None: there is none)."""
    libraries = _library_folders()
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith(libraries) and not frame.filename.startswith("<frozen "):
            return f"{_shown(frame.filename)}:{frame.lineno}"
    return None


@functools.cache
def _library_folders() -> tuple[str, ...]:
    import torch
    import trio

    import flow
    import flow.actors

    folders = {os.path.dirname(module.__file__) for module in (flow, flow.actors, torch, trio)}
    folders |= {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib")}
    return tuple(os.path.join(folder, "") for folder in folders)


def _shown(path: str) -> str:
    """`path` from the working directory when it lies under it, else as it is."""
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith(os.pardir) else relative
