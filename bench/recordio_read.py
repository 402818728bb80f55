"""How fast flow reads a `.rec`, beside the raw read of the same bytes (the ceiling).

    python bench/recordio_read.py [FILE.rec] [--records 20000] [--batch-size 128] [--repeat 5]

Without FILE, builds one in a temporary folder from the MXNet-made fixture payloads (repeated).
Every figure is the best of `--repeat` passes with the file in the page cache, so it measures
the reader, not the disk. Rows: sequential iteration, sequential batches (read_positions), and
shuffled batches through the index; each beside a raw read of the same byte ranges with no
RecordIO parsing (one big read for sequential, one os.pread per record for shuffled).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flow.recordio import IndexedRecordReader, RecordWriter

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data"  # the MXNet-made files the tests use


def build_file(path: Path, records: int) -> None:
    with IndexedRecordReader(FIXTURES / "train.rec") as source:
        payloads = source.read_positions(range(len(source)))
    with RecordWriter(path, index=True) as writer:
        for key in range(records):
            writer.write(payloads[key % len(payloads)], key=key)


def best_of(repeat: int, work) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rec", nargs="?", type=Path)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = args.rec
        if path is None:
            path = Path(folder) / "bench.rec"
            build_file(path, args.records)
        reader = IndexedRecordReader(path)
        count, size = len(reader), reader.size
        batches = [range(start, min(start + args.batch_size, count)) for start in range(0, count, args.batch_size)]
        order = np.random.default_rng(0).permutation(count)
        shuffled = [order[start : start + args.batch_size] for start in range(0, count, args.batch_size)]
        ends = np.append(reader.offsets[1:], size) if np.all(np.diff(reader.offsets) > 0) else None

        def raw_sequential():
            with open(path, "rb", buffering=0) as file:
                buffer = bytearray(1 << 20)
                while file.readinto(buffer):
                    pass

        def raw_shuffled():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                for position in order.tolist():
                    os.pread(descriptor, int(ends[position] - reader.offsets[position]), int(reader.offsets[position]))
            finally:
                os.close(descriptor)

        rows = [
            ("flow sequential, iterate", lambda: sum(1 for _ in reader)),
            ("flow sequential, batches", lambda: [reader.read_positions(batch) for batch in batches]),
            ("raw sequential read (ceiling)", raw_sequential),
            ("flow shuffled, batches via .idx", lambda: [reader.read_positions(batch) for batch in shuffled]),
        ]
        if ends is not None:
            rows.append(("raw shuffled pread (ceiling)", raw_shuffled))
        raw_sequential()  # warm the page cache
        seconds = {name: best_of(args.repeat, work) for name, work in rows}
        reader.close()

    print(f"{path.name if args.rec else 'built file'}: {count} records, {size / 1e6:.1f} MB, batch {args.batch_size}")
    print(f"{'read':34} {'records/s':>12} {'MB/s':>9} {'vs ceiling':>11}")
    for name, elapsed in seconds.items():
        ceiling = seconds["raw shuffled pread (ceiling)" if "shuffled" in name and ends is not None
                          else "raw sequential read (ceiling)"]
        print(f"{name:34} {count / elapsed:12,.0f} {size / elapsed / 1e6:9,.0f} {ceiling / elapsed:10.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
