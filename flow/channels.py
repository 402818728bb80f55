"""Channel hand-offs that skip the scheduler when they need not wait.

trio's `send` and `receive` always yield to the scheduler, even when the buffer has room or a
message waiting: a full scheduler pass each (~10 us on a small VM), several per training step.
These take the no-wait path first and yield only when they must wait, so a stage that finds its
input ready and its output free runs on; the channels' bounds still apply (a full channel waits,
and a task that never waits is bounded by the buffers it drains or fills), and a cancelled task
stops at them as at trio's own.
"""

from __future__ import annotations

import trio


async def send(channel: trio.MemorySendChannel, message) -> None:
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled task stops here, as at trio's own send
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        await channel.send(message)


async def receive(channel: trio.MemoryReceiveChannel):
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return channel.receive_nowait()
    except trio.WouldBlock:
        return await channel.receive()
