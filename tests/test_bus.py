import pytest
import trio

from flow.actors.bus import Subscription, bus


async def publish(events, subscriptions):
    send, receive = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus, receive, subscriptions)
        async with send:
            for event in events:
                await send.send(event)


async def test_every_subscriber_gets_every_event_in_order():
    first, second = Subscription(), Subscription(max_buffer=2)
    received = {"first": [], "second": []}

    async def read(name, subscription):
        async for event in subscription:
            received[name].append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, "first", first)
        nursery.start_soon(read, "second", second)
        await publish(range(50), [first, second])
    assert received == {"first": list(range(50)), "second": list(range(50))}


async def test_drop_oldest_never_blocks_and_counts_what_it_dropped():
    stalled = Subscription(max_buffer=3, policy="drop_oldest")
    await publish(range(100), [stalled])  # nobody reads: the publisher must still finish
    assert stalled.dropped == 97
    assert [event async for event in stalled] == [97, 98, 99]


async def test_block_policy_holds_the_publisher_back(autojump_clock):
    slow = Subscription(max_buffer=2, policy="block")
    published = []
    send, receive = trio.open_memory_channel(0)

    async def producer():
        async with send:
            for event in range(10):
                await send.send(event)
                published.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus, receive, [slow])
        nursery.start_soon(producer)
        await trio.sleep(1)
        # 2 buffered, 1 held by the bus waiting for room, 1 handed over by the producer
        assert len(published) <= 4
        assert [event async for event in slow] == list(range(10))


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        Subscription(policy="sometimes")
