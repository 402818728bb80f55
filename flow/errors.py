"""The one exception type flow raises for bad input, with the file and byte offset it concerns."""

from __future__ import annotations

import os


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
