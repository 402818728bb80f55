"""The metric actor alone, driven through its channels: StepStatistics and SplitEnd in, events out."""

import pytest
import torch
import trio
import trio.testing

from flow.actors.metrics import MetricSettings, SplitEnd, StepStatistics, metrics
from flow.errors import ConfigError
from flow.events import BatchEnd, EpochEnd, LearningRateChanged, Validation
from flow.metrics import create_metric

SETTINGS = MetricSettings(metrics=("accuracy",), top_k=0, batch_size=4, disp_batches=2)


def outputs(split, epoch, index, right, time=0.0, samples=4, lr=0.1):
    """A batch of 4 rows over 2 classes, all labelled 0, whose first `right` rows predict 0, as a
    compute actor reports it: the statistics of its first `samples` rows (the rest are pads)."""
    probabilities = torch.tensor([[0.9, 0.1] if row < right else [0.1, 0.9] for row in range(4)])
    statistics = create_metric(SETTINGS.metrics).statistics(torch.zeros(samples), probabilities[:samples])
    return StepStatistics(split, epoch, index, (statistics,), time, lr)


async def run_actor(messages, settings=SETTINGS):
    """Every event the actor sends for `messages`, in order."""
    output_send, output_receive = trio.open_memory_channel(len(messages))
    event_send, event_receive = trio.open_memory_channel(100)
    for message in messages:
        output_send.send_nowait(message)
    output_send.close()
    await metrics(settings, output_receive, event_send)
    return [event async for event in event_receive]


async def test_speedometer_reports_then_epoch_end_then_validation():
    # Right rows by batch: 4, 2, 0, 3, 1; one second a batch, from 10.0.
    train = [outputs("train", 0, index, right, time=10.0 + index) for index, right in enumerate([4, 2, 0, 3, 1])]
    events = await run_actor([
        *train,
        SplitEnd("train", 0, batches=5, samples=20, seconds=5.5),
        outputs("val", 0, 0, 1), outputs("val", 0, 1, 2, samples=2),  # two pad rows, both wrong, count for nothing
        SplitEnd("val", 0, batches=2, samples=6, seconds=0.0),
    ])
    assert events == [
        # Batch 0 starts the clock; the first window holds batches 0-2 (6 of 12 right), as MXNet's.
        BatchEnd(0, 2, 2 * 4 / 2.0, [("accuracy", 0.5)], 0.1, 0),
        BatchEnd(0, 4, 2 * 4 / 2.0, [("accuracy", 0.5)], 0.1, 2),  # batches 3-4: 4 of 8
        EpochEnd(0, [("accuracy", 0.5)], 5.5, 20, 5, 0.1),  # 10 of 20, at the last update's lr
        Validation(0, [("accuracy", 0.5)], 6),  # 1 + 2 of 6
    ]


async def test_the_fit_loops_events_go_on_between_the_figures_in_the_order_they_came():
    train = [outputs("train", 1, index, 4, time=float(index)) for index in range(3)]
    events = await run_actor([SplitEnd("val", 0, batches=0, samples=0, seconds=0.0), LearningRateChanged(7, 0.01),
                              *train, SplitEnd("train", 1, batches=3, samples=12, seconds=1.0)])
    assert [type(event) for event in events] == [Validation, LearningRateChanged, BatchEnd, EpochEnd]
    assert events[1] == LearningRateChanged(7, 0.01)


async def test_each_epoch_starts_its_metrics_and_clock_afresh():
    def epoch(number, right, start):
        return [*(outputs("train", number, index, right, time=start + index) for index in range(3)),
                SplitEnd("train", number, batches=3, samples=12, seconds=1.0)]

    events = await run_actor([*epoch(0, 4, 0.0), *epoch(1, 0, 100.0)])
    assert events == [BatchEnd(0, 2, 4.0, [("accuracy", 1.0)], 0.1, 0), EpochEnd(0, [("accuracy", 1.0)], 1.0, 12, 3, 0.1),
                      BatchEnd(1, 2, 4.0, [("accuracy", 0.0)], 0.1, 0), EpochEnd(1, [("accuracy", 0.0)], 1.0, 12, 3, 0.1)]


async def test_a_bus_that_does_not_take_events_holds_the_fit_loop_back():
    output_send, output_receive = trio.open_memory_channel(1)
    event_send, event_receive = trio.open_memory_channel(0)  # as the bus's: a send waits for the bus
    with trio.fail_after(10):  # a wrong channel size would deadlock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics, SETTINGS, output_receive, event_send)
            for index in range(3):
                await output_send.send(outputs("train", 0, index, 4, time=float(index)))
            await trio.testing.wait_all_tasks_blocked()  # the actor waits to hand over batch 2's report
            output_send.send_nowait(outputs("train", 0, 3, 4))  # the channel's one place
            with pytest.raises(trio.WouldBlock):
                output_send.send_nowait(outputs("train", 0, 4, 4))
            assert isinstance(await event_receive.receive(), BatchEnd)
            await output_send.send(outputs("train", 0, 4, 4, time=4.0))  # taken: the actor goes on
            output_send.close()
            assert [event.batch async for event in event_receive] == [4]


async def test_a_metric_it_cannot_make_is_its_error_and_closes_its_channels():
    output_send, output_receive = trio.open_memory_channel(1)
    event_send, event_receive = trio.open_memory_channel(1)
    with pytest.raises(ConfigError, match="unknown metric 'pcc'"):
        await metrics(MetricSettings(("pcc",), 0, 4, 2), output_receive, event_send)
    with pytest.raises(trio.BrokenResourceError):  # the fit loop learns it at its next send
        output_send.send_nowait(outputs("train", 0, 0, 4))
    with pytest.raises(trio.EndOfChannel):  # and the bus ends
        event_receive.receive_nowait()


async def test_each_devices_slice_adds_to_the_same_figures():
    statistics = create_metric(SETTINGS.metrics).statistics
    two_slices = (statistics(torch.zeros(3), torch.tensor([[0.9, 0.1]] * 3)),  # 3 of 3 right
                  statistics(torch.zeros(1), torch.tensor([[0.1, 0.9]])))  # 0 of 1
    events = await run_actor([StepStatistics("val", 0, 0, two_slices, 0.0),
                              SplitEnd("val", 0, batches=1, samples=4, seconds=0.0)])
    assert events == [Validation(0, [("accuracy", 0.75)], 4)]


async def test_cancelled_while_waiting_on_the_bus_it_stops_and_closes_its_channels():
    output_send, output_receive = trio.open_memory_channel(1)
    event_send, event_receive = trio.open_memory_channel(0)
    with trio.move_on_after(5) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics, SETTINGS, output_receive, event_send)
            for index in range(3):
                await output_send.send(outputs("train", 0, index, 4, time=float(index)))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert not deadline.cancelled_caught
    with pytest.raises(trio.EndOfChannel):
        event_receive.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        output_send.send_nowait(outputs("train", 0, 3, 4))


async def test_with_a_validation_channel_each_validation_goes_back_there_too():
    output_send, output_receive = trio.open_memory_channel(10)
    event_send, event_receive = trio.open_memory_channel(10)
    validation_send, validation_receive = trio.open_memory_channel(10)
    for message in [outputs("train", 0, 0, 4, lr=0.5), SplitEnd("train", 0, 1, 4, 1.0), outputs("val", 0, 0, 3),
                    SplitEnd("val", 0, 1, 4, 0.0)]:
        output_send.send_nowait(message)
    output_send.close()
    await metrics(SETTINGS, output_receive, event_send, validation_send)
    events = [event async for event in event_receive]
    assert events == [EpochEnd(0, [("accuracy", 1.0)], 1.0, 4, 1, 0.5), Validation(0, [("accuracy", 0.75)], 4)]
    assert [validation async for validation in validation_receive] == events[1:]  # and it closes the channel
