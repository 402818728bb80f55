"""Train the example from a Trio program, printing our own progress from flow's events.

    python examples/embed.py [--set train.num_epochs=1 ...]

This is how a service, a notebook or a hyper-parameter search drives flow: open a run, read its
event stream, and stop it whenever we like (here: when validation accuracy is good enough).

A run prints nothing of its own. For `flow run`'s MXNet log lines and progress bar, attach the
console too: `nursery.start_soon(flow.log_run, run.events())` after `logging.basicConfig(level=logging.INFO)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

import flow
from flow.events import BatchEnd, CheckpointSaved, EpochEnd, RunFinished, Validation

EXAMPLE = Path(__file__).resolve().parent / "train.toml"


async def main(overrides: list[str], target_accuracy: float) -> None:
    config = flow.load_config(EXAMPLE, overrides)
    async with flow.open_run(config) as run:
        async for event in run.events(policy="drop_oldest", max_buffer=256):
            if isinstance(event, BatchEnd):
                print(f"  epoch {event.epoch} batch {event.batch}: {event.samples_per_second:,.0f} samples/s")
            elif isinstance(event, EpochEnd):
                print(f"epoch {event.epoch} done in {event.seconds:.1f} s: {dict(event.metrics)}")
            elif isinstance(event, CheckpointSaved):
                print(f"  saved {event.params_path}")
            elif isinstance(event, Validation):
                accuracy = dict(event.metrics).get("accuracy", 0.0)
                print(f"epoch {event.epoch} validation accuracy {accuracy:.3f}")
                if accuracy >= target_accuracy:
                    print(f"reached {target_accuracy:.0%}: stopping early")
                    run.cancel()
            elif isinstance(event, RunFinished):
                print(f"finished: {event.epochs} epochs, {event.updates} updates in {event.seconds:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--target-accuracy", type=float, default=0.99)
    args = parser.parse_args()
    trio.run(main, args.set, args.target_accuracy)
