"""Time the data loader alone (fit.py's --test-io): `flow test-io train.toml [--set section.key=value ...]`.

Runs only the training loader of the config ([data], with train.num_epochs, train.disp_batches,
train.seed, and train.devices, which the batches' layout and pinning are for) and prints on
stdout `Batch [i]\\tSpeed: N samples/sec` every disp_batches batches, then each epoch's
`test-io: epoch E: S samples in T s, R samples/sec` and last `test-io: steady R samples/sec over
epochs A-B`: the mean rate of the epochs after the first (which pays for opening the file and
warming up), or of the only epoch.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

# unknown_option_hint is for the CLI, which asks each command's module for one.
from flow.run_command import add_override_arguments, unknown_option_hint  # noqa: F401

# The keys the loader alone reads: fit.py's flags for the others belong to `flow run`.
READS = ("train.num_epochs", "train.disp_batches", "train.seed", "train.devices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [-h] [--debug] [--set SECTION.KEY=VALUE] [fit.py's flags] config"
    parser.add_argument("config", help="the train.toml file (the same one `flow run` takes)")
    add_override_arguments(parser, reads=lambda key: key.startswith("data.") or key in READS)


def run(args: argparse.Namespace) -> int:
    import trio

    from flow.config import load_config

    config = load_config(args.config, args.set)

    def emit(line: str) -> None:
        print(line, flush=True)

    epochs = trio.run(measure, config, emit)
    emit(steady_line(epochs, first_epoch=0))
    return 0


async def measure(config, emit: Callable[[str], None] | None = None) -> list[tuple[int, float]]:
    """(samples, seconds) of each epoch of the config's training loader, from epoch 0; `emit` gets
    the Batch and epoch lines as they happen."""
    import torch
    import trio

    from flow.actors.loader import EpochEnd, loader, record_table
    from flow.builders import loader_settings
    from flow.errors import ConfigError, unwrapped_errors
    from flow.metrics import io_speed_line

    settings = loader_settings(config.data, "train", config.train.seed, config.train.devices)
    if settings.pin_memory and not torch.cuda.is_available():
        raise ConfigError(f"train.devices: {list(config.train.devices)} on a machine without a CUDA GPU: test-io "
                          f"pins its batches for the GPU; --set train.devices='[\"cpu\"]' times the CPU's loader")
    every = config.train.disp_batches
    emit = emit or (lambda line: None)
    epochs: list[tuple[int, float]] = []
    send_channel, receive_channel = trio.open_memory_channel(0)
    with unwrapped_errors():
        async with trio.open_nursery() as nursery:
            started = time.perf_counter()  # the first epoch pays for reading the record table too
            table = await trio.to_thread.run_sync(record_table, settings)
            nursery.start_soon(loader, settings, table, send_channel, 0, config.train.num_epochs)
            async with receive_channel:
                epoch_start = tic = started
                samples_since_tic = 0
                async for message in receive_channel:
                    now = time.perf_counter()
                    if isinstance(message, EpochEnd):
                        seconds = now - epoch_start
                        epochs.append((message.samples, seconds))
                        emit("test-io: epoch %d: %d samples in %.3f s, %.2f samples/sec"
                             % (message.epoch, message.samples, seconds, message.samples / seconds))
                        epoch_start = tic = now
                        samples_since_tic = 0
                        continue
                    samples_since_tic += len(message.data) - message.pad
                    if (message.index + 1) % every == 0:
                        emit(io_speed_line(message.index, samples_since_tic / (now - tic)))
                        tic = now
                        samples_since_tic = 0
    return epochs


def steady_line(epochs: list[tuple[int, float]], first_epoch: int = 0) -> str:
    """The mean samples/s over the epochs after the first (or the only one), as a summary line."""
    steady = epochs[1:] or epochs
    first = first_epoch + len(epochs) - len(steady)
    last = first_epoch + len(epochs) - 1
    rate = sum(samples / seconds for samples, seconds in steady) / len(steady)
    span = str(first) if first == last else f"{first}-{last}"
    return "test-io: steady %.2f samples/sec over epochs %s" % (rate, span)
