"""The one exception type flow raises for bad input, with the file and byte offset it concerns."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


class FlowError(Exception):
    """Bad input or a failed run, said in one line: ``path: at byte N: what is wrong``.

    The CLI prints ``str(error)`` and exits non-zero; nothing else needs a traceback.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, offset: int | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.offset = offset
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.offset is not None:
            where.append(f"at byte {self.offset}")
        return ": ".join(where + [self.message])

    def __reduce__(self):
        return (type(self), (self.message, self.path, self.offset))


class RecordIOError(FlowError):
    """A `.rec` or `.idx` file that is missing, truncated or not RecordIO."""


class ImageError(FlowError):
    """An image that cannot be decoded or encoded."""


class ConfigError(FlowError):
    """A config key that is unknown, of the wrong type or out of range."""


class CheckpointError(FlowError):
    """A checkpoint that is missing, incomplete, damaged since it was written, or not only tensors."""


class DistributedError(FlowError):
    """Another process of a distributed job stopped (or hangs), so this one cannot go on."""


class UserCodeError(FlowError):
    """The user's own code (the model, the loss, a custom data source, a network factory) raised:
    what, where in that code and when in the run (flow/user_code.py); its exception is the `__cause__`."""


class NonFiniteLossError(FlowError):
    """A training step's loss is NaN or inf (and train.skip_nonfinite is off): the update is not made."""


class AllocationError(FlowError):
    """Memory ran out (the host's, or a device's) outside the user's own code."""


def first_cause(error: BaseException) -> BaseException:
    """The exception that started a failure, out of the (nested) groups Trio's nurseries raise.

    When one actor fails, the others see echoes of it (Cancelled, or their channels closing under
    them); the first exception that is none of those is the cause. With nothing else, `error` itself.
    """
    import trio  # here, so that importing this module stays cheap for the CLI's light commands

    echoes = (trio.Cancelled, trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)

    def leaves(exception: BaseException) -> Iterator[BaseException]:
        if isinstance(exception, BaseExceptionGroup):
            for inner in exception.exceptions:
                yield from leaves(inner)
        else:
            yield exception

    return next((leaf for leaf in leaves(error) if not isinstance(leaf, echoes)), error)


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raises an exception group from the block as its first cause, so callers catch a FlowError
    (or the user's own exception) rather than an ExceptionGroup around one."""
    try:
        yield
    except BaseExceptionGroup as group:
        cause = first_cause(group)
        if cause is group:
            raise
        cause.__suppress_context__ = True  # `from None`, but keeping a __cause__ it has (a UserCodeError's)
        raise cause
