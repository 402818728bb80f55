"""Print a run's event log: `flow events PREFIX-events.msgpack [--json | --csv]`.

Without options, one readable line per event; with --json, JSON lines (one object per event), ready
for jq or pandas.read_json(lines=True); with --csv, one row per epoch, as the CSV logger
(log.csv_file, flow/csv_log.py) writes them.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="the {model_prefix}-events.msgpack file of a run")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="JSON lines instead of text")
    formats.add_argument("--csv", action="store_true", help="one CSV row per epoch: metrics, lr, time, samples/s")


def run(args: argparse.Namespace) -> int:
    from flow.event_log import read_event_records, read_events

    if args.csv:
        from flow.csv_log import EpochRows

        rows = EpochRows()
        for event in read_events(args.log, on_torn_tail=torn_tail_warning("events")):
            rows.add(event)
        sys.stdout.write(rows.text())
        return 0

    for record in read_event_records(args.log, on_torn_tail=torn_tail_warning("events")):
        if args.json:
            print(json.dumps(record))
        else:
            kind = record.pop("event")
            print(kind, " ".join(f"{key}={_text(value)}" for key, value in record.items()))
    return 0


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and value and all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        return ",".join(f"{name}:{_text(number)}" for name, number in value)
    return str(value)


def torn_tail_warning(command: str):
    """What a command reading a log does with a torn last event: one line on stderr, and go on."""
    return lambda message: print(f"flow {command}: warning: {message}", file=sys.stderr)
