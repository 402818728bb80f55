"""The `flow` command: one sub-command per module, each with `add_arguments(parser)` and `run(args)`.

Bad input raises `FlowError`; here it becomes one line on stderr and exit status 1
(the full traceback only with `--debug`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

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
    args = build_parser().parse_args(argv)
    try:
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
        if args.debug:
            raise
        print(f"flow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
