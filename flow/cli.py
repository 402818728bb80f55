"""The `flow` command: one sub-command per module, each with `add_arguments(parser)` and `run(args)`,
and optionally `unknown_option_hint(option, value)` to say what to type instead of an option it lacks.

Bad input raises `FlowError`; here it becomes one line on stderr and exit status 1
(the full traceback only with `--debug`). Ctrl-C (SIGINT) becomes "flow COMMAND: interrupted"
and exit status 130; a command that stops on SIGTERM too (`flow run`) ends with "flow COMMAND:
terminated" and exit status 143. The help users see is SUMMARY, COMMON_COMMANDS and READ_MORE.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from flow.errors import FlowError

# name -> module; a module imports its heavy dependencies (torch) inside `run`, so `flow --help` is quick.
COMMANDS = {
    "im2rec": "flow.im2rec",
    "inspect": "flow.inspect",
    "run": "flow.run_command",
    "score": "flow.score_command",
    "predict": "flow.predict_command",
    "events": "flow.events_command",
    "plot": "flow.plot",
    "test-io": "flow.io_speed",
    "import-mxnet": "flow.mxnet_import",
}


SUMMARY = "flow trains image classifiers the way MXNet's fit.py does, on PyTorch, from MXNet RecordIO files."

COMMON_COMMANDS = """\
common commands:
  flow run train.toml                    train as train.toml says (fit.py's flags work: --lr 0.01)
  flow run train.toml --resume           go on from the newest good checkpoint of checkpoint.model_prefix
  flow score train.toml --load-epoch 4   checkpoint 4's validation metrics
  flow predict train.toml --load-epoch 4 --data new.rec -o preds.csv
                                         each record's id and class probabilities
  flow test-io train.toml                time the data loader alone (fit.py's --test-io)
  flow im2rec --list --recursive data/pets images/
                                         list images/<class>/* into data/pets.lst
  flow im2rec data/pets images/          pack data/pets*.lst into .rec + .idx files
  flow inspect data/pets.rec             count records, labels and image sizes; check integrity
  flow events runs/pets-events.msgpack   what a run did, one line per event
  flow plot runs/pets-events.msgpack     a run's curves, in curves.png
  flow import-mxnet mx/resnet 30 runs/resnet --network resnet --num-layers 20 --image-shape 3,28,28
                                         MXNet's resnet-0030.params as a flow checkpoint"""

READ_MORE = """\
Read more: `flow COMMAND --help` for a command's options; README.md for the train.toml keys,
and examples/train.toml for a config to start from."""


class FlowParser(argparse.ArgumentParser):
    """The top-level parser: its help opens with what flow does, before the usage line."""

    def format_help(self) -> str:
        return f"{SUMMARY}\n\n{super().format_help()}"


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: an option it lacks that its module can name a replacement for
    (fit.py's --data-nthreads: --set data.data_nthreads=...) is an error saying so."""

    def __init__(self, *args, unknown_option_hint=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.unknown_option_hint = unknown_option_hint

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if self.unknown_option_hint:
            for position, extra in enumerate(extras):
                option, equals, value = extra.partition("=")
                if not option.startswith("--"):
                    continue
                if not equals and position + 1 < len(extras) and not extras[position + 1].startswith("-"):
                    value = extras[position + 1]  # `--option value`, as fit.py's flags are given
                hint = self.unknown_option_hint(option, value or None)
                if hint:
                    self.error(f"no option {option}; {hint}")
        return namespace, extras


class Terminated(BaseException):
    """SIGTERM ended the command, as KeyboardInterrupt says SIGINT did (exit status 143)."""


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGINT during the block raises KeyboardInterrupt only when the block has finished.

    For imports: a KeyboardInterrupt raised in the Python code that torch's C++ initialization
    calls (its module imports, from torch._C._c10d_init and others) cannot unwind through that C++
    and aborts the process ("terminate called after throwing an instance of 'python_error'", exit
    134); one raised where an import ignores exceptions is lost, and the run goes on.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # signals reach only the main thread; a SIGINT handler of the caller's own (or SIG_IGN) stays
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = FlowParser(prog="flow", description=COMMON_COMMANDS, epilog=READ_MORE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)  # `flow` alone: the help, as `git` alone
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  unknown_option_hint=getattr(module, "unknown_option_hint", None))
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        with interrupts_deferred():  # the commands' modules import: an interrupt meanwhile is the command's
            args = build_parser().parse_args(argv)
        return args.run(args) or 0
    except FlowError as error:
        if args.debug:
            raise
        print(f"flow {args.command}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `flow events FILE | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KeyboardInterrupt, Terminated) as stop:
        # On the way out now: a second Ctrl-C would turn this line into a traceback or, once the
        # interpreter shuts down (torch's teardown takes a while), kill the process by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.debug:
            raise
        interrupted = isinstance(stop, KeyboardInterrupt)
        print(f"flow {args.command}: {'interrupted' if interrupted else 'terminated'}", file=sys.stderr)
        return 128 + (signal.SIGINT if interrupted else signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
