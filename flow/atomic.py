"""Files that are whole or absent: written to a temporary name, fsynced, then renamed into place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from flow.errors import FlowError


def temporary_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def replace_durably(tmp_path: Path, path: Path) -> None:
    """Renames a written, fsynced `tmp_path` onto `path`, and fsyncs the folder so the rename survives a crash."""
    os.replace(tmp_path, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def make_parent_folder(path: Path) -> None:
    """Makes the folder `path` goes in (and those above it); failing, a FlowError that says why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FlowError(f"cannot write: {path.parent} or a folder above it is a regular file", path) from None
    except OSError as error:
        raise FlowError(f"cannot make its folder: {error.strerror}", path) from None


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """`path` holds `data` afterwards, or (after a crash or an error) whatever it held before."""
    path = Path(path)
    tmp_path = temporary_path(path)
    make_parent_folder(path)
    try:
        with open(tmp_path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        replace_durably(tmp_path, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # on a read-only file system even removing a missing file fails
            tmp_path.unlink(missing_ok=True)
        raise FlowError(f"cannot write: {error.strerror}", path) from None
