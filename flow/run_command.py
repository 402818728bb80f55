"""Train a model end to end from a train.toml: `flow run train.toml [--set section.key=value ...]`.

Prints MXNet's log lines (Speedometer, Train-/Validation- metrics, Time cost, Saved checkpoint),
which MXNet's tools/parse_log.py reads. `--resume` continues from the newest checkpoint of
checkpoint.model_prefix that is complete and verifies (checkpoint.resume = true). Several processes:
`torchrun --nproc-per-node N -m flow run train.toml --set train.kv_store='"dist_sync"'`.

Ctrl-C (SIGINT) or SIGTERM stops the run after its current step, saving a checkpoint where it
stands (mid-epoch too), from which `--resume` goes on as if it had never stopped; the exit status
is then 130 or 143. A second Ctrl-C ends it at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import typing
from typing import Callable

# fit.py's flags for the keys its users set most, in fit.py's order, then data.py's. Each flag
# is the key's name with dashes (--batch-size: data.batch_size) and means `--set key=VALUE`;
# train.devices is fit.py's --gpus, a list of GPU numbers.
FIT_PY_KEYS = (
    "model.network", "model.num_layers", "train.devices", "train.kv_store", "train.num_epochs", "train.lr",
    "train.lr_factor", "train.lr_step_epochs", "train.optimizer", "train.mom", "train.wd", "data.batch_size",
    "train.disp_batches", "checkpoint.model_prefix", "train.monitor", "checkpoint.load_epoch", "train.top_k",
    "data.data_train", "data.data_val", "data.image_shape", "data.num_classes", "data.num_examples",
)

# fit.py and fine-tune.py flags whose flow equivalent has another name or is another command.
FIT_PY_RENAMED = {
    "--pretrained-model": "use --set model.pretrained_prefix={value} (fine-tune.py's --load-epoch N: "
                          "--set model.pretrained_epoch=N)",
    "--test-io": "use `flow test-io CONFIG`, which takes the same config and data flags",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [-h] [--debug] [--resume] [--set SECTION.KEY=VALUE] [fit.py's flags] config"
    parser.add_argument("config", help="the train.toml file")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint of model_prefix that verifies")
    add_override_arguments(parser)


def add_override_arguments(parser: argparse.ArgumentParser, reads: Callable[[str], bool] = lambda key: True) -> None:
    """--set, and fit.py's flags for the keys `reads` accepts, all collected in args.set in order."""
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set data.batch_size=256 (repeatable)")
    group = parser.add_argument_group(
        "fit.py's flags", "each is the --set beside it; later ones win, --set included")
    for key in filter(reads, FIT_PY_KEYS):
        if key == "train.devices":
            group.add_argument("--gpus", action=_Override, key=key, to_value=gpu_devices, metavar="0,1",
                               help="GPU numbers: --set train.devices='[\"cuda:0\", \"cuda:1\"]'")
        else:
            group.add_argument("--" + key.partition(".")[2].replace("_", "-"), action=_Override, key=key,
                               to_value=_override_value(key), metavar="VALUE", help=f"--set {key}=VALUE")


def _override_value(key: str) -> Callable[[str], str]:
    """How a flag's text becomes the --set value of `key`."""
    from flow.config import SECTIONS

    section, name = key.split(".")
    cls = SECTIONS[section]
    if next(f for f in dataclasses.fields(cls) if f.name == name).metadata["path"]:
        # A path typed in a shell is from the working directory, as in fit.py (in train.toml and
        # --set, from the config file); empty stays empty (model_prefix: no checkpoints).
        return lambda path: os.path.abspath(path) if path else path
    if typing.get_origin(typing.get_type_hints(cls)[name]) is tuple:
        return json.dumps  # a TOML string, which the config splits ("30,60"); a bare 30 would not be a list
    return str


def gpu_devices(gpus: str) -> str:
    """fit.py's --gpus ("0,2"; empty: the CPU) as a train.devices value in TOML."""
    numbers = [number.strip() for number in gpus.split(",") if number.strip()]
    return "[%s]" % ", ".join(f'"cuda:{number}"' for number in numbers) if numbers else '["cpu"]'


class _Override(argparse.Action):
    """A fit.py flag: appends `key=value` to args.set, where --set puts its overrides."""

    def __init__(self, option_strings, dest, key: str, to_value: Callable[[str], str], **kwargs):
        super().__init__(option_strings, "set", default=argparse.SUPPRESS, **kwargs)
        self.key = key
        self.to_value = to_value

    def __call__(self, parser, namespace, value, option_string=None):
        # A new list: the one there may be --set's default, shared by every parse.
        namespace.set = [*getattr(namespace, "set", []), f"{self.key}={self.to_value(value)}"]


def unknown_option_hint(option: str, value: str | None) -> str | None:
    """What to type instead of a fit.py flag flow has no option for, or None when it has no equivalent."""
    from flow.config import SECTIONS, sections_with_key

    if option in FIT_PY_RENAMED:
        return FIT_PY_RENAMED[option].format(value=value or "VALUE")
    key = option.lstrip("-").replace("-", "_")
    homes = sections_with_key(key)
    if not homes:
        return None
    if typing.get_type_hints(SECTIONS[homes[0]])[key] is bool and value in ("0", "1"):
        value = ("false", "true")[int(value)]  # fit.py's 0/1 switches (--random-crop 1) are booleans here
    return f"use --set {homes[0]}.{key}={value or 'VALUE'}"


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
    from flow.cli import Terminated, interrupts_deferred

    with interrupts_deferred():  # torch imports here: Ctrl-C must not land inside its C++ initialization
        import torch
        import trio

        from flow.config import load_config
        from flow.errors import AllocationError, FlowError
        import flow.console  # noqa: F401 (train_with_console's imports: here, so that Ctrl-C waits for them too)
        import flow.run  # noqa: F401

    overrides = list(args.set)
    config = load_config(args.config, overrides)
    if args.resume:
        if not config.checkpoint.model_prefix:
            raise FlowError("--resume needs checkpoint.model_prefix", args.config)
        config = load_config(args.config, overrides + ["checkpoint.resume=true"])
    configure_logging()
    logger = logging.getLogger("flow")
    logger.info("start with arguments")  # fit.py's first line, one line per section after it
    for line in argument_lines(config):
        logger.info("%s", line)
    try:
        # Ctrl-C arrives as KeyboardInterrupt at a checkpoint of the main task, never in the middle of
        # synchronous code (an actor's cleanup, say, which must end its worker threads before the
        # run can wait for them), and the cancellation that follows runs every cleanup whole.
        stopped_by = trio.run(train_with_console, config, restrict_keyboard_interrupt_to_checkpoints=True)
    except (MemoryError, torch.cuda.OutOfMemoryError) as error:  # in flow's own code (the user's: a UserCodeError)
        detail = str(error).strip().splitlines()
        raise AllocationError(f"out of memory: {type(error).__name__}{': ' + detail[0] if detail else ''}") from error
    finally:
        from flow.distributed import leave
        leave()
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt
    if stopped_by == signal.SIGTERM:
        raise Terminated
    return 0


async def train_with_console(config) -> int | None:
    """Runs `config` to the end with the console attached: MXNet's log lines, and a progress bar on a
    terminal. SIGINT or SIGTERM stops it (flow/stop_signals.py); returns that signal (None: none came)."""
    import trio

    from flow.console import log_run
    from flow.run import open_run
    from flow.errors import unwrapped_errors
    from flow.stop_signals import SignalStop, stop_signal_receiver

    with stop_signal_receiver() as signals, unwrapped_errors():  # the run's error as itself, not in a group
        async with trio.open_nursery() as nursery:
            stop = SignalStop(nursery.cancel_scope)
            if signals is not None:
                nursery.start_soon(stop.watch, signals)
            async with open_run(config) as run:
                stop.attach(run)
                await log_run(run.events(policy="block"))  # "block": training waits for the console rather than lose a line
                await run.wait()
            nursery.cancel_scope.cancel()
    return stop.signal


# Logged even at their defaults: what tells one run's log from another's.
ALWAYS_LOGGED = {
    "data": ("data_train", "data_val", "image_shape", "num_classes", "batch_size"),
    "model": ("network",),
    "train": ("num_epochs", "devices", "kv_store", "optimizer", "lr"),
    "checkpoint": ("model_prefix", "load_epoch"),
}


def argument_lines(config, width: int = 100) -> list[str]:
    """The config as `[section] key=value ...` lines: the keys in ALWAYS_LOGGED and every key
    not at its default, in field order; a section's line wraps before `width`, indented."""
    lines = []
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        defaults = type(section)()
        always = ALWAYS_LOGGED.get(section_field.name, ())
        items = [f"{f.name}={getattr(section, f.name)!r}" for f in dataclasses.fields(section)
                 if f.name in always or getattr(section, f.name) != getattr(defaults, f.name)]
        if not items:  # a section all at its defaults with nothing always shown ([log]: no logger)
            continue
        head = f"[{section_field.name}]"
        rows: list[list[str]] = [[]]
        for item in items:
            if rows[-1] and len(head) + len(" ".join(rows[-1] + [item])) >= width:
                rows.append([])
            rows[-1].append(item)
        lines += [f"{head if i == 0 else ' ' * len(head)} {' '.join(row)}".rstrip() for i, row in enumerate(rows)]
    return lines
