"""The event bus actor: every event its producers send goes to every subscriber, in order.

Each subscriber has its own bounded buffer and a policy for when it falls behind:
`"block"` (the bus waits, so a slow subscriber slows the producers: nothing is lost) or
`"drop_oldest"` (the oldest buffered event is dropped and counted: training never waits).
"""

from __future__ import annotations

from collections import deque

import trio

from flow.event_log import EventLogWriter

POLICIES = ("block", "drop_oldest")


class Subscription:
    """An async iterator over the events published after it was made; ends when the run ends."""

    def __init__(self, max_buffer: int = 1024, policy: str = "block"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer}")
        self.max_buffer = max_buffer
        self.policy = policy
        self.dropped = 0  # events dropped under "drop_oldest"
        self._buffer: deque = deque()
        self._closed = False
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()

    async def put(self, event) -> None:
        if self._closed:
            return
        if self.policy == "drop_oldest":
            if len(self._buffer) >= self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1
        else:
            while len(self._buffer) >= self.max_buffer and not self._closed:
                await self._writers.park()
        self._buffer.append(event)
        self._readers.unpark_all()

    def close(self) -> None:
        """No more events: the reader finishes what is buffered, then its loop ends."""
        self._closed = True
        self._readers.unpark_all()
        self._writers.unpark_all()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._buffer:
            await trio.lowlevel.checkpoint()  # a trio async function always yields once
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._readers.park()
        event = self._buffer.popleft()
        self._writers.unpark_all()
        return event


async def bus(event_channel: trio.MemoryReceiveChannel, subscriptions: list[Subscription],
              log: EventLogWriter | None = None) -> None:
    """Fans each event out; when every producer has closed its end, closes every subscription.

    `log` gets each event first, so it holds every event any subscriber saw, even after a crash.
    `subscriptions` may grow while the bus runs (a user subscribing late sees later events).
    """
    try:
        with event_channel:
            async for event in event_channel:
                if log is not None:
                    log.write(event)
                for subscription in list(subscriptions):
                    await subscription.put(event)
    finally:
        if log is not None:
            log.close()
        for subscription in subscriptions:
            subscription.close()
