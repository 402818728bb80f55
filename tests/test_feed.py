"""The feed actor alone: the caller's batches in the loader's protocol, in order, one batch ahead at most."""

import pytest
import torch
import trio
import trio.testing

from flow.actors.feed import feed
from flow.actors.loader import Batch, EpochEnd
from flow.errors import FlowError, UserCodeError, unwrapped_errors


def pairs(epoch, count=3, size=4):
    """`count` (data, label) pairs whose data says which epoch and batch they are."""
    async def iterate():
        for index in range(count):
            yield torch.full((size, 2), float(epoch * 100 + index)), torch.zeros(size)
    return iterate()


async def everything(source, begin_epoch=0, num_epochs=1, buffer=0) -> list:
    """What feed sends, until it closes its channel."""
    send, receive = trio.open_memory_channel(buffer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed, source, send, begin_epoch, num_epochs)
        return [message async for message in receive]


async def test_each_epochs_batches_in_order_then_its_epoch_end():
    sent = await everything(pairs, begin_epoch=2, num_epochs=2)
    assert [type(message) for message in sent] == [Batch] * 3 + [EpochEnd] + [Batch] * 3 + [EpochEnd]
    assert [(batch.epoch, batch.index, batch.pad) for batch in sent if isinstance(batch, Batch)] == [
        (2, 0, 0), (2, 1, 0), (2, 2, 0), (3, 0, 0), (3, 1, 0), (3, 2, 0)]
    assert [int(batch.data[0, 0]) for batch in sent if isinstance(batch, Batch)] == [200, 201, 202, 300, 301, 302]
    assert [message for message in sent if isinstance(message, EpochEnd)] == [EpochEnd(2, 3, 12), EpochEnd(3, 3, 12)]


async def test_a_batch_passes_as_it_is_and_its_pad_counts_in_no_sample():
    padded = Batch(0, 0, torch.zeros(4, 2), torch.zeros(4), pad=3)

    async def batches(epoch):
        yield padded
        yield torch.ones(4, 2), torch.ones(4)

    sent = await everything(batches)
    assert sent[0] is padded
    assert sent[-1] == EpochEnd(0, 2, 1 + 4)


async def test_a_plain_iterable_is_iterated_once_an_epoch():
    class Batches:
        def __init__(self):
            self.passes = 0

        def __aiter__(self):
            self.passes += 1
            return pairs(0, count=2)

    source = Batches()
    sent = await everything(source, num_epochs=3)
    assert source.passes == 3
    assert [message.epoch for message in sent if isinstance(message, EpochEnd)] == [0, 1, 2]


async def test_takes_a_batch_from_the_source_only_when_the_last_one_is_taken():
    pulled = []

    async def counted(epoch):
        for index in range(100):
            pulled.append(index)
            yield torch.zeros(4, 2), torch.zeros(4)

    send, receive = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed, counted, send)
        await trio.testing.wait_all_tasks_blocked()
        assert pulled == [0]  # held by feed until a receiver takes it
        await receive.receive()
        await receive.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert pulled == [0, 1, 2]
        nursery.cancel_scope.cancel()


async def test_an_item_that_is_no_batch_is_a_flow_error_naming_it_after_the_batches_before_it():
    async def bad(epoch):
        yield torch.zeros(4, 2), torch.zeros(4)
        yield "not a batch"

    send, receive = trio.open_memory_channel(1)
    with pytest.raises(FlowError, match=r"^custom data: batch 1 of epoch 0 is not a Batch or a \(data, label\) pair$"):
        await feed(bad, send)
    assert isinstance(receive.receive_nowait(), Batch)
    with pytest.raises(trio.EndOfChannel):  # closed: the fit loop is not left waiting
        receive.receive_nowait()


async def test_the_sources_own_error_is_one_line_naming_where_and_when_caused_by_it():
    async def failing(epoch):
        yield torch.zeros(4, 2), torch.zeros(4)
        raise OSError("the caller's data is unreadable")

    with pytest.raises(UserCodeError, match=r"^the custom data source raised OSError: the caller's data is unreadable "
                                            r"\(tests/test_feed.py:\d+; Epoch\[0\] Batch\[1\]\)$") as failed:
        with unwrapped_errors():
            await everything(failing)
    assert isinstance(failed.value.__cause__, OSError)


async def test_cancelled_while_nobody_takes_its_batch_it_stops_and_closes_its_channel(autojump_clock):
    send, receive = trio.open_memory_channel(0)
    with trio.move_on_after(5) as scope:
        await feed(pairs, send, 0, 1000)
    assert scope.cancelled_caught
    with pytest.raises(trio.EndOfChannel):
        receive.receive_nowait()
