"""Seeds derived from (run seed, purpose, epoch, ...): a resumed run replays the same random draws."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str, *parts: int) -> int:
    """A 63-bit seed that depends on every argument and on nothing else (no process or global state)."""
    text = ":".join([str(seed), purpose, *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
