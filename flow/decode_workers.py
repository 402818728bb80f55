"""The loader's decoding threads: `nthreads` threads for the loader's lifetime, filling batch
slices taken from one queue.

A Trio thread call for every slice cost the Trio thread ~560 us of CPU a batch (15% of a core on
2 cores, taken from the decoding threads); these threads take slices from a queue and wake Trio
once a batch, when its last slice is done.
"""

from __future__ import annotations

import queue
from functools import partial

import trio

from flow.batch_builder import BatchBuilder, BatchJob


class DecodeWorkers:
    def __init__(self, builder: BatchBuilder, nthreads: int):
        self.builder = builder
        self.nthreads = nthreads
        self.slices: queue.SimpleQueue[tuple[BatchJob, int] | None] = queue.SimpleQueue()

    def start(self, nursery: trio.Nursery) -> None:
        token = trio.lowlevel.current_trio_token()
        limiter = trio.CapacityLimiter(self.nthreads)  # not Trio's default one: these threads hold it for the run
        for _ in range(self.nthreads):
            nursery.start_soon(partial(trio.to_thread.run_sync, self.work, token, limiter=limiter))

    def submit(self, job: BatchJob) -> None:
        """Queues the slices of a prepared job; `job.done` is set once they are all filled (or one failed)."""
        for start in self.builder.slice_starts:
            self.slices.put((job, start))

    def stop(self) -> None:
        """Synchronous, so it runs when cancelled too: the threads end after their current slice."""
        for _ in range(self.nthreads):
            self.slices.put(None)

    def work(self, token: trio.lowlevel.TrioToken) -> None:
        """A worker thread's life: fill slices until told to stop."""
        staging = self.builder.staging()
        while (item := self.slices.get()) is not None:
            job, start = item
            if self.builder.fill(job, start, staging):
                token.run_sync_soon(job.done.set)
