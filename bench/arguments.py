"""Command-line checks the benchmark scripts share (standard library only: the scripts also run
as workers in the DALI and MXNet venvs, which have neither flow nor torch)."""

from __future__ import annotations

import argparse


def check(parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...],
          peers: dict[str, str]) -> argparse.Namespace:
    """Every option in `positive` at least 1 (when given); `--only` split into known peer names."""
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.only = [peer.strip() for peer in args.only.split(",") if peer.strip()]
    unknown = [peer for peer in args.only if peer not in peers]
    if unknown:
        parser.error(f"--only: unknown peer {', '.join(unknown)}; choose from {', '.join(peers)}")
    return args
