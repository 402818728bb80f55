"""The event log format: `{model_prefix}-events.msgpack`, one msgpack map per event, appended.

The bus writes each event here before any subscriber sees it, whole and unbuffered, so after a
crash (even SIGKILL) the file reads back every event that anyone saw. A crash in the middle of a
write can leave a torn final event: readers leave it out and say so in one line, and a writer
opening the log (a resumed run) cuts it off before appending, so that the log reads on past it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import msgpack

from flow.atomic import make_parent_folder
from flow.errors import FlowError
from flow.events import event_from_dict, event_to_dict


def event_log_path(model_prefix: str) -> Path:
    return Path(f"{model_prefix}-events.msgpack")


class EventLogWriter:
    """Appends events to a log (a resumed run continues its log). A few microseconds an event.

    An event is written whole or not at all: what a failed write (a full disk, a file-size limit)
    left of it is cut off again and the failure is a FlowError, so no event lands after a torn one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        make_parent_folder(self.path)
        try:
            _cut_torn_tail(self.path)
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: each event reaches the OS whole
            self._end = os.fstat(self._file.fileno()).st_size
        except OSError as error:  # a read-only folder, say
            raise FlowError(f"cannot write the event log: {error.strerror}", self.path) from None
        self._packer = msgpack.Packer(use_bin_type=True)

    def write(self, event) -> None:
        data = memoryview(self._packer.pack(event_to_dict(event)))
        written = 0
        try:
            while written < len(data):
                count = self._file.write(data[written:])  # may write less than asked (a full disk)
                if not count:
                    raise OSError(28, os.strerror(28))  # no progress and no error: as good as a full disk
                written += count
        except OSError as error:
            try:
                os.ftruncate(self._file.fileno(), self._end)
            except OSError:
                pass  # the torn event stays: readers leave it out, and the next writer cuts it
            raise FlowError(f"cannot write the event log: {error.strerror}", self.path, self._end) from None
        self._end += written

    def close(self) -> None:
        self._file.close()


def _cut_torn_tail(path: Path) -> None:
    """Truncates the log at `path` (if any) after its last whole event, saying so when that removes bytes."""
    if not path.is_file():
        return  # nothing yet (or a device, such as /dev/full in a test)
    scan = _Scan(path)
    for _ in scan:
        pass
    if scan.torn_at is not None:
        os.truncate(path, scan.torn_at)
        logging.getLogger("flow").warning("%s; removed it before appending", scan.torn_message())


class _Scan:
    """The msgpack objects of a file as (offset, object). After the last, `torn_at` is where a final
    object the file ends inside of starts (None: the file ends after a whole one)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.torn_at: int | None = None
        self.size = 0

    def __iter__(self) -> Iterator[tuple[int, object]]:
        try:
            file = open(self.path, "rb")
        except FileNotFoundError:
            raise FlowError("no such file", self.path) from None
        except OSError as error:
            raise FlowError(f"cannot read: {error.strerror}", self.path) from None
        with file:
            self.size = os.fstat(file.fileno()).st_size
            unpacker = msgpack.Unpacker(file, raw=False, strict_map_key=False)
            offset = 0
            while True:
                try:
                    record = unpacker.unpack()
                except msgpack.OutOfData:
                    self.torn_at = offset if offset < self.size else None
                    return
                except (msgpack.UnpackException, ValueError) as error:
                    raise FlowError(f"not a msgpack event ({type(error).__name__}: {error})", self.path, offset) from None
                except OSError as error:
                    raise FlowError(f"cannot read: {error.strerror}", self.path, offset) from None
                yield offset, record
                offset = unpacker.tell()

    def torn_message(self) -> str:
        return str(FlowError(f"a torn last event ({self.size - self.torn_at} bytes: a crash in the middle of "
                             f"a write)", self.path, self.torn_at))


def read_event_records(path: str | Path, on_torn_tail: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Every whole event in the log, as the dicts that were written (plain data). A torn last event
    is left out; `on_torn_tail` then gets one line saying where it starts."""
    for _, record in _event_records(path, on_torn_tail):
        yield record


def _event_records(path, on_torn_tail) -> Iterator[tuple[int, dict]]:
    scan = _Scan(path)
    for offset, record in scan:
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            raise FlowError("not an event record (a msgpack map with an 'event' name)", path, offset)
        yield offset, record
    if scan.torn_at is not None and on_torn_tail is not None:
        on_torn_tail(scan.torn_message())


def read_events(path: str | Path, on_torn_tail: Callable[[str], None] | None = None) -> list:
    """The log's events as flow.events dataclasses (`on_torn_tail` as for read_event_records). An
    event of a kind this flow does not know, or with fields of the wrong kind, is a FlowError."""
    return [_event(record, path, offset) for offset, record in _event_records(path, on_torn_tail)]


def _event(record: dict, path, offset: int):
    try:
        return event_from_dict(record)
    except ValueError as error:
        raise FlowError(str(error), path, offset) from None
