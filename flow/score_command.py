"""Score a checkpoint on the validation data: `flow score train.toml --load-epoch N [--set data.data_val=FILE]`.

Prints MXNet's `Epoch[N-1] Validation-<metric>=<value>` lines for checkpoint N (train.metrics and
train.top_k on data.data_val), the lines the training run printed after the epoch that wrote it,
with the same figures. `flow.score(config, epoch)` is the same from Python.
"""

from __future__ import annotations

import argparse
import logging

# unknown_option_hint is for the CLI, which asks each command's module for one.
from flow.run_command import add_override_arguments, unknown_option_hint  # noqa: F401

# The keys scoring reads besides [data]: fit.py's flags for the others belong to `flow run`.
READS = ("checkpoint.model_prefix", "checkpoint.load_epoch", "train.devices", "train.top_k")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [-h] [--debug] --load-epoch N [--set SECTION.KEY=VALUE] [fit.py's flags] config"
    parser.add_argument("config", help="the train.toml of the run that wrote the checkpoint")
    add_override_arguments(parser, reads=lambda key: key.startswith("data.") or key in READS)


def run(args: argparse.Namespace) -> int:
    from flow.cli import interrupts_deferred

    with interrupts_deferred():  # torch imports here: Ctrl-C must not land inside its C++ initialization
        import trio

        from flow.config import load_config
        from flow.inference import score
        from flow.metrics import validation_line
        from flow.run_command import configure_logging

    config = load_config(args.config, args.set)
    configure_logging()
    metrics = trio.run(score, config, restrict_keyboard_interrupt_to_checkpoints=True)
    epoch = config.checkpoint.load_epoch
    for name, value in metrics:
        logging.getLogger("flow").info(validation_line(epoch - 1, name, value))
    return 0
