"""The thread budget: torch's intra-op threads beside the loader's decode threads, so that the two
share the process's cores instead of fighting over them.

With as many torch threads as cores and the decode threads on the same cores, an epoch of a model
that takes as long as the loader took the sum of the two, not the longer one: each side's threads
wait on the cores the other holds (OpenMP's team waits for its slowest thread).

torch keeps its intra-op thread count per thread under OpenMP (and MKL's likewise): a
`torch.set_num_threads` governs the ops of the thread that calls it, and the count a thread starts
with. So the compute actor sets its count in its own worker thread, around each call, and puts back
what that thread had: a count set in the caller's thread would not reach a worker thread that has
run torch before (Trio reuses its threads), and the caller's own count is never touched.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset or a container's cpuset set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def torch_threads(cores: int, decode_threads: int, cpu_replicas: int, torch_default: int) -> int:
    """Each CPU replica's share of the cores the decode threads leave, at most torch's own count
    (`torch_default`: OMP_NUM_THREADS, torchrun's 1, a caller's torch.set_num_threads), at least 1."""
    share = (cores - decode_threads) // max(1, cpu_replicas)
    return max(1, min(torch_default, share))


def oversubscribed(torch_threads: int, cpu_replicas: int, decode_threads: int, cores: int) -> bool:
    """Whether the threads that compute at once outnumber the cores."""
    return torch_threads * max(1, cpu_replicas) + decode_threads > cores


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads for the ops this thread runs inside the block (0: as it has them), and
    the thread's own count again after it, however the block ends."""
    if not threads:
        yield
        return
    found = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(found)
