"""The event log format: `{model_prefix}-events.msgpack`, one msgpack map per event, appended.

The bus writes each event here before any subscriber sees it, whole and unbuffered, so after a
crash (even SIGKILL) the file reads back every event that anyone saw; a torn final event (a
crash in the middle of a write) is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import msgpack

from flow.atomic import make_parent_folder
from flow.errors import FlowError
from flow.events import event_from_dict, event_to_dict


def event_log_path(model_prefix: str) -> Path:
    return Path(f"{model_prefix}-events.msgpack")


class EventLogWriter:
    """Appends events to a log (a resumed run continues its log). A few microseconds an event."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        make_parent_folder(self.path)
        try:
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: each event reaches the OS whole
        except OSError as error:  # a read-only folder, say
            raise FlowError(f"cannot write the event log: {error.strerror}", self.path) from None
        self._packer = msgpack.Packer(use_bin_type=True)

    def write(self, event) -> None:
        self._file.write(self._packer.pack(event_to_dict(event)))

    def close(self) -> None:
        self._file.close()


def read_event_records(path: str | Path) -> Iterator[dict]:
    """Every whole event in the log, as the dicts that were written (plain data)."""
    path = Path(path)
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise FlowError("no such file", path) from None
    with file:
        unpacker = msgpack.Unpacker(file, raw=False, strict_map_key=False)
        while True:
            offset = unpacker.tell()
            try:
                record = unpacker.unpack()
            except msgpack.OutOfData:
                return  # the end, or a final event torn by a crash
            except (msgpack.UnpackException, ValueError) as error:
                raise FlowError(f"not a msgpack event ({type(error).__name__}: {error})", path, offset) from None
            if not isinstance(record, dict) or "event" not in record:
                raise FlowError("not an event record (a msgpack map with an 'event' key)", path, offset)
            yield record


def read_events(path: str | Path) -> list:
    """The log's events as flow.events dataclasses."""
    return [event_from_dict(record) for record in read_event_records(path)]
