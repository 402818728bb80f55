"""Summarise a .rec file: records, labels, image sizes, its .idx, and an integrity scan.

Walks every record once: counts them, histograms the label (the first label, and the label
width, for multi-label records), reads each image's height and width from its header (no pixel
decoding), checks the .idx beside the file against the records found, and stops at the first
damaged record with `integrity: FAILED at byte N: ...`. Exit status 1 when the scan or the
.idx check fails. --raw is for files whose payloads are not image records: count and sizes only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from flow.errors import FlowError, RecordIOError
from flow.image import decode_size
from flow.recordio import RecordReader, index_path_for, read_index, unpack

# Beyond this many distinct label values the text output lists only the most common ones.
_LABELS_SHOWN = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rec", help="the .rec file (its .idx is looked for beside it)")
    parser.add_argument("--raw", action="store_true", help="payloads are not image records: count and sizes only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    report = inspect_rec(args.rec, raw=args.raw)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["integrity"]["ok"] and (report["index"] is None or report["index"]["ok"]) else 1


def _label_name(value: float) -> str:
    # Labels are float32: class ids print as integers, others with float32's own precision.
    return str(int(value)) if value.is_integer() else str(np.float32(value))


def _failure(offset: int | None, message: str) -> dict:
    return {"ok": False, "offset": offset, "message": message}


def scan(reader: RecordReader, raw: bool) -> dict:
    """Walks every record from the start; stops at the first damaged one."""
    offsets: list[int] = []
    sizes: list[int] = []
    first_labels: Counter = Counter()
    widths: Counter = Counter()
    heights: list[int] = []
    image_widths: list[int] = []
    integrity = {"ok": True, "offset": None, "message": None}
    offset = 0
    try:
        while offset < reader.size:
            payload, next_offset = reader.read_at(offset)
            if not raw:
                try:
                    header, image = unpack(payload)
                    height, width = decode_size(image)
                except FlowError as error:
                    hint = " (not an image record? --raw reads any payload)"
                    raise RecordIOError(error.message + hint, reader.path, offset) from None
                labels = np.atleast_1d(header.label)
                first_labels[float(labels[0])] += 1
                widths[header.flag or 1] += 1
                heights.append(height)
                image_widths.append(width)
            offsets.append(offset)
            sizes.append(len(payload))
            offset = next_offset
    except RecordIOError as error:
        # The error names the damaged part, which may lie inside the record that starts at `offset`.
        integrity = _failure(offset if error.offset is None else error.offset, error.message)
    result = {
        "records": len(offsets),
        "record_bytes": {
            "min": min(sizes, default=0),
            "max": max(sizes, default=0),
            "total": sum(sizes),
        },
        "integrity": integrity,
        "offsets": offsets,
    }
    if not raw:
        result["labels"] = {
            "width": {"min": min(widths, default=0), "max": max(widths, default=0)},
            "first_label_counts": {
                _label_name(value): first_labels[value]
                for value in sorted(first_labels, key=lambda value: (math.isnan(value), value))
            },
        }
        result["image_size"] = {
            "height": [min(heights, default=0), max(heights, default=0)],
            "width": [min(image_widths, default=0), max(image_widths, default=0)],
        }
    return result


def check_index(reader: RecordReader, index_path: Path, record_offsets: list[int], scan_complete: bool) -> dict:
    """Whether the `.idx` has one entry per record found, each at a record's first byte, keys unique."""
    result = {"path": str(index_path), "entries": 0, "ok": True, "offset": None, "message": None}
    try:
        keys, offsets = read_index(index_path)
    except RecordIOError as error:
        return result | _failure(error.offset, error.message)
    result["entries"] = len(offsets)
    starts = set(record_offsets)
    scanned_to = record_offsets[-1] if record_offsets else -1
    line_of: dict[int, int] = {}
    for line, offset in enumerate(offsets.tolist(), start=1):
        if offset in line_of:
            return result | _failure(offset, f"{index_path.name} line {line} points at the same record as line {line_of[offset]}")
        line_of[offset] = line
        if offset < 0 or offset >= reader.size:
            return result | _failure(offset, f"{index_path.name} line {line} points past the end of the file ({reader.size} bytes)")
        # Beyond a failed scan the record starts are unknown: look at the bytes there instead.
        found = offset in starts if scan_complete or offset <= scanned_to else reader.is_record_at(offset)
        if not found:
            return result | _failure(offset, f"{index_path.name} line {line} points at no record start")
    if scan_complete and len(offsets) != len(record_offsets):
        return result | _failure(None, f"{index_path.name} has {len(offsets)} entries for {len(record_offsets)} records")
    if len(np.unique(keys)) != len(keys):
        return result | _failure(None, f"{index_path.name} repeats keys: {len(keys) - len(np.unique(keys))} duplicates")
    return result


def inspect_rec(path: str, raw: bool = False) -> dict:
    """Everything `flow inspect` reports, as a JSON-ready dict."""
    with RecordReader(path) as reader:
        result = scan(reader, raw)
        record_offsets = result.pop("offsets")
        integrity = result.pop("integrity")
        index_path = index_path_for(path)
        index = None
        if index_path.exists():
            index = check_index(reader, index_path, record_offsets, integrity["ok"])
        return {"file": str(path), "bytes": reader.size, **result, "index": index, "integrity": integrity}


def format_report(report: dict) -> str:
    sizes = report["record_bytes"]
    mean = sizes["total"] / report["records"] if report["records"] else 0
    lines = [
        f"file: {report['file']}",
        f"bytes: {report['bytes']}",
        f"records: {report['records']}",
        f"record bytes: min {sizes['min']}, max {sizes['max']}, mean {mean:.1f}, total {sizes['total']}",
    ]
    if "labels" in report:
        width = report["labels"]["width"]
        counts = report["labels"]["first_label_counts"]
        width_text = str(width["max"]) if width["min"] == width["max"] else f"{width['min']}-{width['max']}"
        what = "label" if width["max"] <= 1 else "first label"
        lines.append(f"labels: width {width_text}, {len(counts)} distinct values; {what} -> records:" if counts else "labels: none")
        shown = counts if len(counts) <= _LABELS_SHOWN else dict(Counter(counts).most_common(_LABELS_SHOWN))
        lines += [f"  {label}: {count}" for label, count in shown.items()]
        if len(shown) < len(counts):
            lines.append(f"  ... {len(counts) - len(shown)} more values (--json lists all)")
        height, image_width = report["image_size"]["height"], report["image_size"]["width"]
        lines.append(f"image size: height {height[0]}-{height[1]}, width {image_width[0]}-{image_width[1]}")
    index = report["index"]
    if index is None:
        lines.append("index: none")
    elif index["ok"]:
        lines.append(f"index: {index['path']}: {index['entries']} entries, agrees with the records")
    else:
        lines.append(f"index: FAILED{_at(index['offset'])}: {index['message']}")
    integrity = report["integrity"]
    lines.append("integrity: ok" if integrity["ok"] else f"integrity: FAILED{_at(integrity['offset'])}: {integrity['message']}")
    return "\n".join(lines)


def _at(offset: int | None) -> str:
    return "" if offset is None else f" at byte {offset}"
