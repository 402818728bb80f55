"""The CSV logger (`log.csv_file`): one row per epoch, made from the run's events.

    epoch,train-accuracy,train-cross-entropy,validation-accuracy,validation-cross-entropy,lr,seconds,samples_per_second
    0,0.4115,1.6503,0.7,0.9120,0.05,2.538,3940.9

A row is an epoch's EpochEnd (train metrics, the last update's lr, its time cost and training
speed) and Validation. Numbers are written as Python's repr, so they read back as the events' floats
to the bit. The file is rewritten whole (atomically) at each of those events, so it is always a
complete CSV, and a validation column appears once there is one. A run resumed at epoch N keeps the
file's rows before N. `flow events --csv` makes the same rows from an event log.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import AsyncIterable

import trio

from flow.atomic import write_atomically
from flow.events import EpochEnd, RunStarted, Validation

SPEED_COLUMNS = ("lr", "seconds", "samples_per_second")


class EpochRows:
    """The rows so far, by epoch. An epoch seen again (a resumed run's, in an event log of several runs)
    starts its row afresh."""

    def __init__(self):
        self.rows: dict[int, dict[str, object]] = {}

    def add(self, event) -> bool:
        """Takes `event` into its epoch's row; whether it was one that makes rows."""
        if isinstance(event, EpochEnd):
            speed = event.samples / event.seconds if event.seconds > 0 else 0.0
            self.rows[event.epoch] = {"epoch": event.epoch,
                                      **{f"train-{name}": value for name, value in event.metrics},
                                      "lr": event.lr, "seconds": event.seconds, "samples_per_second": speed}
        elif isinstance(event, Validation):
            self.rows.setdefault(event.epoch, {"epoch": event.epoch}).update(
                {f"validation-{name}": value for name, value in event.metrics})
        else:
            return False
        return True

    def keep_before(self, text: str, epoch: int) -> None:
        """Takes the rows before `epoch` from a CSV this class wrote (values come back as their text)."""
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("epoch", "").isdigit() and int(row["epoch"]) < epoch:
                self.rows[int(row["epoch"])] = {key: value for key, value in row.items() if value and (
                    key in ("epoch", *SPEED_COLUMNS) or key.startswith(("train-", "validation-")))}

    def columns(self) -> list[str]:
        names = dict.fromkeys(key for row in self.rows.values() for key in row)
        metrics = [name for name in names if name.startswith(("train-", "validation-"))]
        return ["epoch", *sorted(metrics, key=lambda name: not name.startswith("train-")), *SPEED_COLUMNS]

    def text(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns(), lineterminator="\n")
        writer.writeheader()
        for epoch in sorted(self.rows):
            writer.writerow({key: repr(value) if isinstance(value, float) else value
                             for key, value in self.rows[epoch].items()})
        return out.getvalue()


async def log_csv(events: AsyncIterable, path: str) -> None:
    """Rewrites `path` at each epoch's end and validation until the stream ends; a write that fails
    (a full disk) is a FlowError naming the file."""
    rows = EpochRows()
    async for event in events:
        if isinstance(event, RunStarted) and event.begin_epoch:
            text = await trio.to_thread.run_sync(_read_or_empty, Path(path))
            rows.keep_before(text, event.begin_epoch)
        if rows.add(event):
            await trio.to_thread.run_sync(write_atomically, path, rows.text().encode())


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""
