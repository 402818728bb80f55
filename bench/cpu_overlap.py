"""Training on the CPU while the loader decodes: flow's thread budget against torch's default count.

With a model that takes about as long as the loader, an epoch should take about the longer of the
two (the loader fills the next batches while compute runs this one), not their sum. Torch's
intra-op threads (as many as cores by default) and the loader's decode threads on the same cores
take that away: each side waits on cores the other holds. The budget gives torch the cores the
decode threads leave (train.torch_threads = 0; flow/thread_budget.py).

Usage (from the repository root, with the project venv):

    .venv/bin/python bench/cpu_overlap.py
    .venv/bin/python bench/cpu_overlap.py --rounds 5 --decode-threads 1

The peers, each in a fresh process, in --rounds interleaved rounds:
  loader   the loader alone: flow run with a no-op model (one parameter), so an epoch is the
           loader's time to decode, normalize and hand over its batches.
  compute  the model alone: flow run on as many batches held in memory (train_data=), at the
           budget's thread count (what the model gets in `budget`).
  budget   flow run, loader and model: train.torch_threads = 0, the budget's count.
  default  flow run, loader and model: train.torch_threads = torch's default count, what every
           flow run had before the budget.

The workload: --records 64x64 JPEG records (the MXNet-made fixtures repeated, as bench/test_io.py
writes them into --data-dir), batch --batch-size, --decode-threads decode threads, shuffled, no
augmentation; the model avg-pool --pool -> conv 5x5 (--channels filters) -> tanh -> max-pool 2
-> fc 10 (its size sets how long compute takes beside the loader: by default about as long as
the loader here), SGD, softmax cross-entropy, accuracy.

Figures: an epoch's seconds are its EpochEnd event's (from its first batch taken to its last
update); steady = the median over epochs 2..N; CPU is the process's CPU time (all threads) over
the same epochs, per epoch. "vs default" is the median over rounds of each round's ratio: on a
shared machine the CPU a process gets moves its times, and a round's peers run back to back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import arguments  # bench/arguments.py, beside this script
import test_io  # bench/test_io.py: the dataset

PEERS = {
    "loader": "loader alone (no-op model)",
    "compute": "model alone (in-memory batches), budget's threads",
    "budget": "loader + model, thread budget",
    "default": "loader + model, torch's default threads",
}
RESULT_PREFIX = "cpu-overlap-bench-result: "
PEER_TIMEOUT_S = 900
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 64, 64)


# --------------------------------------------------------------------------- workers (child processes)


def model(args, counts: list):
    """The peer's model; each forward appends the intra-op thread count it runs under to `counts`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if args.worker == "loader":
        class NoOp(nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(1))

            def forward(self, data):
                return data.flatten(1)[:, :NUM_CLASSES] * self.weight

        layers = NoOp()
    else:
        _, height, width = IMAGE_SHAPE
        side = (height // args.pool - 4) // 2, (width // args.pool - 4) // 2
        layers = nn.Sequential(nn.AvgPool2d(args.pool), nn.Conv2d(3, args.channels, 5), nn.Tanh(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(args.channels * side[0] * side[1], NUM_CLASSES))

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, data):
            counts.append(torch.get_num_threads())
            return self.layers(data)

    return Counted()


def in_memory_batches(args):
    """As many batches an epoch as the loader makes, four distinct ones cycled (compute's cost does
    not depend on the values)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    pool = [(torch.randn(args.batch_size, *IMAGE_SHAPE, generator=generator),
             torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator).float()) for _ in range(4)]
    batches = -(-args.records // args.batch_size)

    def epoch_batches(epoch: int):
        async def iterate():
            for index in range(batches):
                yield pool[index % len(pool)]
        return iterate()
    return epoch_batches


def worker_main(args) -> None:
    import torch
    import trio

    from flow import builders
    from flow.config import config_from_dict
    from flow.events import EpochEnd, RunStarted
    from flow.run import open_run

    rec_path, _ = test_io.dataset_paths(args.data_dir, args.records)
    in_memory = args.worker == "compute"
    config = config_from_dict({
        "data": {"data_train": str(rec_path), "image_shape": list(IMAGE_SHAPE), "num_classes": NUM_CLASSES,
                 "batch_size": args.batch_size, "data_nthreads": args.decode_threads, "shuffle": True,
                 "rgb_mean": list(test_io.MEAN), "rgb_std": list(test_io.STD)},
        "train": {"num_epochs": args.epochs, "lr": 0.01, "mom": 0.9, "disp_batches": 10 ** 6},
    })
    if args.worker == "default":
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                       torch_threads=torch.get_num_threads()))
    elif in_memory:  # no decode threads here, but the budget's count as if there were
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, torch_threads=builders.torch_threads(config, args.decode_threads)))
    train_data = in_memory_batches(args) if in_memory else None
    seconds, cpu_marks, counts = [], [], []

    async def train() -> None:
        async with open_run(config, model=model(args, counts), train_data=train_data) as run:
            async for event in run.events():
                if isinstance(event, RunStarted):
                    cpu_marks.append(time.process_time())
                elif isinstance(event, EpochEnd):
                    seconds.append(event.seconds)
                    cpu_marks.append(time.process_time())
            await run.wait()

    trio.run(train)
    print(RESULT_PREFIX + json.dumps({
        "seconds": seconds, "cpu": [end - start for start, end in zip(cpu_marks, cpu_marks[1:])],
        "torch_threads": sorted(set(counts)), "cores": len(os.sched_getaffinity(0))}), flush=True)


# --------------------------------------------------------------------------- parent


def measure(args, peer: str) -> dict:
    command = [sys.executable, __file__, "--worker", peer, "--data-dir", str(args.data_dir),
               "--records", str(args.records), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--decode-threads", str(args.decode_threads), "--channels", str(args.channels), "--pool", str(args.pool)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            steady = slice(1, None)  # epoch 1 holds the warm-up
            result["steady_seconds"] = statistics.median(result["seconds"][steady])
            result["steady_cpu"] = statistics.median(result["cpu"][steady])
            return result
    raise RuntimeError(f"{peer} gave no result (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def print_table(args, rounds: list[dict[str, dict]]) -> None:
    first = rounds[0][args.only[0]]
    print(f"\n{args.records} 64x64 JPEGs, batch {args.batch_size}, {args.decode_threads} decode thread(s), "
          f"avg-pool {args.pool}, conv {args.channels} filters, {args.epochs} epochs (steady: 2..{args.epochs}), "
          f"{first['cores']} cores, {len(rounds)} interleaved rounds; medians over rounds\n")
    print("| peer | torch threads | steady epoch s | CPU s / epoch | epoch vs default | CPU vs default |")
    print("| --- | --- | --- | --- | --- | --- |")
    for peer in args.only:
        results = [round_[peer] for round_ in rounds]
        epoch = statistics.median(r["steady_seconds"] for r in results)
        cpu = statistics.median(r["steady_cpu"] for r in results)
        spread = f" ({min(r['steady_seconds'] for r in results):.2f}-{max(r['steady_seconds'] for r in results):.2f})"
        if "default" in args.only:
            epoch_ratio = statistics.median(r[peer]["steady_seconds"] / r["default"]["steady_seconds"] for r in rounds)
            cpu_ratio = statistics.median(r[peer]["steady_cpu"] / r["default"]["steady_cpu"] for r in rounds)
            ratios = f"{epoch_ratio:.2f}x | {cpu_ratio:.2f}x"
        else:
            ratios = "- | -"
        threads = ",".join(map(str, results[0]["torch_threads"]))
        print(f"| {peer}: {PEERS[peer]} | {threads} | {epoch:.2f}{spread} | {cpu:.2f} | {ratios} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/flow-bench"),
                        help="where the dataset is written once and reused")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4, help="epoch 1 is warm-up; steady is the rest")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16, help="the conv's filters: compute's cost")
    parser.add_argument("--pool", type=int, default=4, help="the model's first avg-pool: compute's cost")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(PEERS), help=f"comma-separated peers: {', '.join(PEERS)}")
    parser.add_argument("--worker", choices=list(PEERS), help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    positive = ("records", "batch_size", "epochs", "decode_threads", "channels", "pool", "rounds")
    return arguments.check(parser, args, positive, PEERS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.epochs < 2:
        sys.exit("--epochs must be at least 2: epoch 1 is warm-up")
    test_io.build_dataset(test_io.FIXTURES_DIR, args.data_dir, args.records)
    rounds = []
    for number in range(args.rounds):
        order = args.only if number % 2 == 0 else args.only[::-1]  # neither peer always runs first
        rounds.append({peer: measure(args, peer) for peer in order})
        print(f"round {number + 1}: " + ", ".join(
            f"{peer} {result['steady_seconds']:.2f} s ({result['steady_cpu']:.2f} CPU s)"
            for peer, result in sorted(rounds[-1].items(), key=lambda item: args.only.index(item[0]))), flush=True)
    print_table(args, rounds)


if __name__ == "__main__":
    main()
