"""Train a model end to end from a train.toml: `flow run train.toml [--set section.key=value ...]`.

Prints MXNet's log lines (Speedometer, Train-/Validation- metrics, Time cost, Saved checkpoint),
which MXNet's tools/parse_log.py reads. `--resume` continues from the newest complete checkpoint
of checkpoint.model_prefix (the same as checkpoint.load_epoch = that epoch). Several processes:
`torchrun --nproc-per-node N -m flow run train.toml --set train.kv_store='"dist_sync"'`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the train.toml file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.01 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint of model_prefix")


def configure_logging() -> None:
    """MXNet-style lines on stderr, time first, as fit.py's logging.basicConfig does (with the
    process's Node[rank] when torchrun started several)."""
    handler = logging.StreamHandler(sys.stderr)
    node = f"Node[{os.environ['RANK']}] " if "RANK" in os.environ else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {node}%(message)s"))
    logger = logging.getLogger("flow")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    from flow.cli import interrupts_deferred

    with interrupts_deferred():  # torch imports here: Ctrl-C must not land inside its C++ initialization
        import trio

        from flow import checkpoints
        from flow.config import load_config
        from flow.errors import FlowError
        from flow.run import train

    overrides = list(args.set)
    config = load_config(args.config, overrides)
    if args.resume:
        if not config.checkpoint.model_prefix:
            raise FlowError("--resume needs checkpoint.model_prefix", args.config)
        epochs = checkpoints.saved_epochs(config.checkpoint.model_prefix)
        if epochs:
            config = load_config(args.config, overrides + [f"checkpoint.load_epoch={epochs[-1]}"])
    configure_logging()
    logging.getLogger("flow").info("start with arguments %s", config)  # fit.py's first line
    try:
        # Ctrl-C arrives as KeyboardInterrupt at a checkpoint of the main task, never in the middle of
        # synchronous code (an actor's cleanup, say, which must end its worker threads before the
        # run can wait for them), and the cancellation that follows runs every cleanup whole.
        trio.run(train, config, restrict_keyboard_interrupt_to_checkpoints=True)
    finally:
        from flow.distributed import leave
        leave()
    return 0
