"""The `flow` command: one sub-command per module, each with `add_arguments(parser)` and `run(args)`.

Bad input raises `FlowError`; here it becomes one line on stderr and exit status 1
(the full traceback only with `--debug`). Ctrl-C (SIGINT) becomes "flow COMMAND: interrupted"
and exit status 130.
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
    "events": "flow.events_command",
    "plot": "flow.plot",
    "test-io": "flow.io_speed",
}


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
    parser = argparse.ArgumentParser(prog="flow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
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
    except KeyboardInterrupt:
        # On the way out now: a second Ctrl-C would turn this line into a traceback or, once the
        # interpreter shuts down (torch's teardown takes a while), kill the process by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.debug:
            raise
        print(f"flow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
