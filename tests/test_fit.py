"""The fit loop alone, driven through its channels by fakes of the loader, the compute actors, the
parameter server and the metric and checkpoint actors (plain Trio tasks, so Trio's mock clock runs
the tests)."""

import math
from dataclasses import dataclass, field

import pytest
import torch
import trio
import trio.testing

from flow.actors.compute import EvalResult, EvalSlice, ReplicaState, SnapshotRequest, TrainResult, TrainSlice
from flow.actors.loader import Batch, EpochEnd
from flow.actors.metrics import SplitEnd, StepStatistics
from flow.actors.param_server import Update, Updated
from flow.errors import FlowError, unwrapped_errors
from flow.events import EarlyStopped, LearningRateChanged, RunFinished, RunStarted, Validation
from flow.fit import FitChannels, FitSettings, fit, slice_bounds, steps_in_flight
from flow.lr_schedule import build_schedule
from flow.metric_watch import WatchSettings

HANG = 1000  # seconds of Trio's mock clock, which jumps ahead whenever every task waits


def test_slices_cover_the_batch_in_order_and_differ_by_at_most_one():
    for batch_size in range(0, 20):
        for devices in range(1, 5):
            bounds = slice_bounds(batch_size, devices)
            assert len(bounds) == devices and bounds[0][0] == 0 and bounds[-1][1] == batch_size
            assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def make_batch(epoch, index, size=4, pad=0, val=False):
    """Rows that say where they come from: data row r of batch i of epoch e is e * 10000 + i * 100 + r
    (+ 50 for validation); the labels are the same numbers."""
    rows = torch.arange(size, dtype=torch.float32) + 10000 * epoch + 100 * index + (50 if val else 0)
    return Batch(epoch, index, rows.unsqueeze(1), rows.clone(), pad)


def epoch_of(epoch, sizes, pads=None, val=False):
    pads = pads or [0] * len(sizes)
    batches = [make_batch(epoch, index, size, pad, val) for index, (size, pad) in enumerate(zip(sizes, pads))]
    return batches + [EpochEnd(epoch, len(sizes), sum(size - pad for size, pad in zip(sizes, pads)))]


@dataclass
class Fakes:
    """The loop's peers, played by tasks that record what they get and answer at once (or after `delays`)."""

    devices: int = 1
    server: bool = False
    saves: bool = True
    train: list = field(default_factory=list)  # every message the train loader sends, epoch after epoch
    val: list | None = None
    delays: dict = field(default_factory=dict)  # replica -> seconds before it answers a slice
    work_buffer: int | None = None  # None: as flow.run sizes the channels
    silent_devices: bool = False  # the devices take work and never answer
    outputs_buffer: int | None = None  # None: room for everything; 0 and no reader: a stalled metric actor
    val_accuracy: list | None = None  # the metric actor's figure for each validation, sent back to the loop
    stop_at: int | None = None  # a stop is requested as a device takes this training batch
    work: list = field(default_factory=list)  # per replica, every message it got
    updates: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    saved: list = field(default_factory=list)
    events: list = field(default_factory=list)
    loaded: int = 0  # train loader messages the loop has taken
    fed_by_the_loop: list = field(default_factory=list)  # the receiving ends of the channels the loop sends on

    def all_closed(self) -> bool:
        """Whether every channel the loop sends on is closed (what is left in them is read away)."""
        def closed(receive):
            while True:
                try:
                    receive.receive_nowait()
                except trio.EndOfChannel:
                    return True
                except trio.WouldBlock:
                    return False
        return all(closed(receive) for receive in self.fed_by_the_loop)

    async def run(self, settings: FitSettings, task_status=trio.TASK_STATUS_IGNORED) -> RunFinished:
        """Runs the fit loop with the fakes around it; returns its summary once every fake is done too."""
        depth = settings.steps_in_flight
        self.work = [[] for _ in range(self.devices)]
        self.stop = trio.Event()
        train_send, train_receive = trio.open_memory_channel(0)
        val_send, val_receive = trio.open_memory_channel(0) if self.val is not None else (None, None)
        result_send, result_receive = trio.open_memory_channel(depth * self.devices)
        output_send, output_receive = trio.open_memory_channel(
            math.inf if self.outputs_buffer is None else self.outputs_buffer)
        event_send, event_receive = trio.open_memory_channel(math.inf)
        save_send, save_receive = trio.open_memory_channel(1) if self.saves else (None, None)
        validation_send, validation_receive = (
            trio.open_memory_channel(1) if self.val_accuracy is not None else (None, None))
        loaders = []  # their cancel scopes: as flow.run's, stopped once the loop is done (an early stop leaves epochs)
        request_send = request_receive = reply_send = reply_receive = None
        if self.server:
            request_send, request_receive = trio.open_memory_channel(0)
            reply_send, reply_receive = trio.open_memory_channel(1)
        work_sends = []
        self.fed_by_the_loop = [output_receive, event_receive]
        self.fed_by_the_loop += [receive for receive in (save_receive, request_receive) if receive is not None]
        with trio.fail_after(HANG):  # mock time: a loop that leaves its peers waiting fails here, not hangs
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._loader, train_send, self.train, True, loaders)
                if self.val is not None:
                    nursery.start_soon(self._loader, val_send, self.val, False, loaders)
                for replica in range(self.devices):
                    work_send, work_receive = trio.open_memory_channel(self.work_buffer or depth)
                    work_sends.append(work_send)
                    self.fed_by_the_loop.append(work_receive)
                    nursery.start_soon(self._compute, replica, work_receive, result_send.clone())
                result_send.close()
                if self.server:
                    nursery.start_soon(self._server, request_receive, reply_send)
                nursery.start_soon(self._collect, event_receive, self.events)
                if self.val_accuracy is not None:
                    nursery.start_soon(self._metrics, output_receive, validation_send)
                elif self.outputs_buffer != 0:
                    nursery.start_soon(self._collect, output_receive, self.outputs)
                if self.saves:
                    nursery.start_soon(self._collect, save_receive, self.saved)
                channels = FitChannels(train_receive, val_receive, work_sends, result_receive, request_send,
                                       reply_receive, output_send, save_send, event_send, stop=self.stop,
                                       validations=validation_receive)
                task_status.started()
                summary = await fit(settings, channels)
                for scope in loaders:
                    scope.cancel()
        return summary

    async def _loader(self, send, messages, counted, scopes):
        with trio.CancelScope() as scope:
            scopes.append(scope)
            async with send:
                for message in messages:
                    await send.send(message)
                    if counted:
                        self.loaded += 1

    async def _metrics(self, outputs, validations):
        """The metric actor: records what it gets, and answers each validation's end with the next figure."""
        async with validations:
            async for message in outputs:
                self.outputs.append(message)
                if isinstance(message, SplitEnd) and message.split == "val":
                    figure = self.val_accuracy[message.epoch]
                    await validations.send(Validation(message.epoch, [("accuracy", figure)], message.samples))

    async def _compute(self, replica, work, results):
        unreported = []  # (batch, statistics) of the slices since the last report, as a replica keeps them
        async with results:
            async for message in work:
                self.work[replica].append(message)
                if isinstance(message, SnapshotRequest):
                    updater = None if self.server else {"optimizer": f"replica {replica}"}
                    await message.reply.send(ReplicaState({"weight": torch.tensor(float(replica))}, updater))
                    continue
                if self.silent_devices:
                    continue
                if isinstance(message, TrainSlice) and message.batch == self.stop_at:
                    self.stop.set()
                await trio.sleep(self.delays.get(replica, 0))
                # statistics: the slice's rows and real samples, so that the loop's order shows
                unreported.append((message.batch, (tuple(message.data.squeeze(1).tolist()), message.samples)))
                statistics = None
                if message.report:
                    statistics, unreported = tuple(unreported), []
                if isinstance(message, TrainSlice):
                    gradients = [torch.tensor(float(replica))] if self.server else None
                    await results.send(TrainResult(replica, statistics, gradients))
                else:
                    await results.send(EvalResult(replica, statistics))

    async def _server(self, requests, replies):
        async with replies:
            async for request in requests:
                if isinstance(request, Update):
                    self.updates.append(request)
                    await replies.send(Updated([torch.tensor(float(request.num_update))]))
                else:
                    await request.reply.send({"optimizer": "server"})

    @staticmethod
    async def _collect(receive, into):
        async for message in receive:
            into.append(message)


def settings(num_epochs=2, devices=1, begin_epoch=0, begin_update=0, period=1, schedule=None, watch=None,
             disp_batches=20):
    """Several devices have a server; batches as large as the in-flight budget: the fewest steps ahead."""
    return FitSettings(begin_epoch, num_epochs, ("cpu",) * devices, "local", period, seed=7,
                       begin_update=begin_update, num_parameters=1,
                       schedule=schedule or build_schedule("multifactor", 1.0, epoch_size=3, lr_factor=0.1,
                                                           lr_step_epochs=(1,)),
                       model_spec={"network": "fake"}, batches_per_epoch=3,
                       steps_in_flight=steps_in_flight(devices > 1, 64 << 20), watch=watch, disp_batches=disp_batches)


def train_slices(messages):
    return [message for message in messages if isinstance(message, TrainSlice)]


async def test_one_device_runs_epochs_in_order_with_checkpoints_and_validation(autojump_clock):
    fakes = Fakes(train=epoch_of(0, [4, 4, 4], pads=[0, 0, 1]) + epoch_of(1, [4, 4, 4], pads=[0, 0, 1]),
                  val=epoch_of(0, [4, 2], val=True) + epoch_of(1, [4, 2], val=True))
    summary = await fakes.run(settings())

    an_epoch = ["TrainSlice"] * 3 + ["SnapshotRequest"] + ["EvalSlice"] * 2
    assert [type(message).__name__ for message in fakes.work[0]] == an_epoch * 2
    trained = train_slices(fakes.work[0])
    assert [(s.epoch, s.lr) for s in trained] == [(0, 1.0)] * 3 + [(1, 0.1)] * 3  # the step at epoch 1: update 4
    assert [s.scale for s in trained] == [1 / 4, 1 / 4, 1 / 3] * 2
    assert [None if s.weight is None else s.weight.tolist() for s in trained[:3]] == [None, None, [1, 1, 1, 0]]
    assert [s.samples for s in trained[:3]] == [4, 4, 3]
    assert all(s.weights is None for s in fakes.work[0] if not isinstance(s, SnapshotRequest))  # it updates itself

    # the metric actor's view: the steps that start the clock (each epoch's first) or report statistics (the
    # window of 20 is longer than the epoch: its last), then the split's end; the learning rate's change at
    # the step that makes it, after the previous epoch's validation (the log's order)
    assert fakes.outputs[6] == LearningRateChanged(4, 0.1)
    assert [(type(m).__name__, m.split, m.epoch) for m in fakes.outputs if not isinstance(m, LearningRateChanged)] == (
        [("StepStatistics", "train", 0)] * 2 + [("SplitEnd", "train", 0)] + [("StepStatistics", "val", 0)] * 2
        + [("SplitEnd", "val", 0)] + [("StepStatistics", "train", 1)] * 2 + [("SplitEnd", "train", 1)]
        + [("StepStatistics", "val", 1)] * 2 + [("SplitEnd", "val", 1)])
    steps = [m for m in fakes.outputs if isinstance(m, StepStatistics)]
    assert all(a.time <= b.time for a, b in zip(steps, steps[1:]))  # the devices' clock, in step order
    assert [(m.index, m.lr) for m in steps[:4]] == [(0, 1.0), (2, 1.0), (0, 0.0), (1, 0.0)]
    for split, loaded in (("train", fakes.train), ("val", fakes.val)):
        batches = [batch for batch in loaded if isinstance(batch, Batch)]
        last = len(batches) // 2 - 1
        split_steps = [m for m in steps if m.split == split]
        # each epoch's last step reports its steps' statistics (the window of 20 is longer than the epoch)
        assert [(m.index, bool(m.statistics)) for m in split_steps] == [
            (batch.index, batch.index == last) for batch in batches if batch.index in (0, last)]
        assert [statistics for m in split_steps for statistics in m.statistics] == [
            (tuple(batch.data.squeeze(1).tolist()), batch.data.shape[0] - batch.pad) for batch in batches]
    ends = [m for m in fakes.outputs if isinstance(m, SplitEnd)]
    assert [(m.batches, m.samples) for m in ends] == [(3, 11), (2, 6)] * 2

    assert [save.epoch for save in fakes.saved] == [1, 2]
    assert fakes.saved[1].states == {"epoch": 2, "num_update": 6, "seed": 7, "updater": {"optimizer": "replica 0"}}
    assert torch.equal(fakes.saved[1].model_state["weight"], torch.tensor(0.0))
    assert fakes.saved[1].model_spec == {"network": "fake"}

    # the summary is the caller's to send
    assert fakes.events == [RunStarted(0, 2, ["cpu"], "local", 1, batches_per_epoch=3)]
    assert (summary.epochs, summary.updates) == (2, 6)


async def test_several_devices_get_their_slices_and_the_server_updates_in_replica_order(autojump_clock):
    fakes = Fakes(devices=2, server=True, train=epoch_of(0, [5, 5], pads=[0, 1]), val=epoch_of(0, [3], val=True),
                  delays={0: 1.0})  # replica 1 answers first
    summary = await fakes.run(settings(num_epochs=1, devices=2))

    first, second = (train_slices(work) for work in fakes.work)
    assert [s.data.squeeze(1).tolist() for s in first + second] == [
        [0, 1, 2], [100, 101, 102], [3, 4], [103, 104]]
    assert first[1].weight.tolist() == [1, 1, 1] and second[1].weight.tolist() == [1, 0]  # the pad is replica 1's
    assert [s.scale for s in first + second] == [1 / 5, 1 / 4] * 2  # over the whole batch's real samples
    assert [(u.num_update, u.lr, u.samples) for u in fakes.updates] == [(1, 1.0, 5), (2, 1.0, 4)]
    assert all([[g.item() for g in replica] for replica in u.gradients] == [[0.0], [1.0]]
               for u in fakes.updates)  # in replica order
    # each replica loads the newest weights once, with its next message
    assert [float(s.weights[0]) for s in (first[1], second[1])] == [1.0, 1.0]
    assert first[0].weights is None
    evaluated = [m for m in fakes.work[1] if isinstance(m, EvalSlice)]
    assert float(evaluated[0].weights[0]) == 2.0
    snapshot = next(m for m in fakes.work[0] if isinstance(m, SnapshotRequest))
    assert float(snapshot.weights[0]) == 2.0  # taken after the last update, which replica 0 had not loaded
    assert next(m for m in fakes.work[0] if isinstance(m, EvalSlice)).weights is None

    steps = [m for m in fakes.outputs if isinstance(m, StepStatistics)]
    # one entry per slice, step by step in replica order, reported at the epoch's end; replica 1's pad is no sample
    assert [m.statistics for m in steps] == [
        (), (((0.0, 1.0, 2.0), 3), ((3.0, 4.0), 2), ((100.0, 101.0, 102.0), 3), ((103.0, 104.0), 1)),
        (((50.0, 51.0), 2), ((52.0,), 1))]
    assert fakes.saved[0].states["updater"] == {"optimizer": "server"}
    assert summary.updates == 2


async def test_the_devices_report_at_each_window_and_epoch_end_and_before_a_batch_that_leaves_one_out(autojump_clock):
    fakes = Fakes(devices=2, server=True, train=epoch_of(0, [4, 4, 4, 4, 4, 1]), val=epoch_of(0, [4] * 4, val=True))
    await fakes.run(settings(num_epochs=1, devices=2, disp_batches=3))
    first, second = (train_slices(work) for work in fakes.work)
    # batch 3 ends a window; batch 5 gives replica 1 nothing, so batch 4 reports; batch 5 ends the epoch
    assert [s.report for s in first] == [False, False, False, True, True, True]
    assert [s.report for s in second] == [False, False, False, True, True]
    evaluated = [m for m in fakes.work[0] if isinstance(m, EvalSlice)]
    assert [m.report for m in evaluated] == [False, False, False, True]  # validation: batch 0 starts no window
    steps = [m for m in fakes.outputs if isinstance(m, StepStatistics) and m.split == "train"]
    assert [m.index for m in steps] == [0, 3, 4, 5]  # the clock's start, then the reports
    assert [[values for values, _ in m.statistics] for m in steps] == [  # step by step, replica by replica
        [], [(0.0, 1.0), (2.0, 3.0), (100.0, 101.0), (102.0, 103.0), (200.0, 201.0), (202.0, 203.0),
             (300.0, 301.0), (302.0, 303.0)],
        [(400.0, 401.0), (402.0, 403.0)], [(500.0,)]]


async def test_a_stop_sends_the_batch_held_back_as_a_report_and_stops_after_it(autojump_clock):
    fakes = Fakes(devices=2, server=True, saves=False, train=epoch_of(0, [4] * 10), stop_at=2)
    summary = await fakes.run(settings(num_epochs=1, devices=2, disp_batches=20))
    # the batch in hand when the loop saw the stop goes as the run's last step, and reports
    sent = [s.report for s in train_slices(fakes.work[0])]
    assert 3 <= len(sent) < 10 and sent == [False] * (len(sent) - 1) + [True]
    assert [s.report for s in train_slices(fakes.work[1])] == sent
    assert [m.index for m in fakes.outputs if isinstance(m, StepStatistics) and m.statistics] == [len(sent) - 1]
    assert (summary.epoch, summary.batch) == (0, len(sent))


async def test_a_resumed_run_counts_on_from_the_checkpoints_update(autojump_clock):
    schedule = build_schedule("multifactor", 1.0, epoch_size=3, lr_factor=0.5, lr_step_epochs=(1, 2, 3))
    fakes = Fakes(train=epoch_of(2, [4, 4, 4]))
    summary = await fakes.run(settings(num_epochs=3, begin_epoch=2, begin_update=6, schedule=schedule))
    assert [s.lr for s in train_slices(fakes.work[0])] == [0.25] * 3  # updates 7-9: after the steps at 3 and 6
    assert [m.lr for m in fakes.outputs if isinstance(m, StepStatistics)] == [0.25] * 2  # the first and the last
    assert fakes.saved[0].states["num_update"] == 9 and fakes.saved[0].epoch == 3
    assert (summary.epochs, summary.updates) == (1, 9)


async def test_checkpoints_every_period_epochs_and_none_without_a_checkpoint_actor(autojump_clock):
    train = epoch_of(0, [4]) + epoch_of(1, [4]) + epoch_of(2, [4])
    fakes = Fakes(train=train)
    await fakes.run(settings(num_epochs=3, period=2))
    assert [save.epoch for save in fakes.saved] == [2]
    unsaved = Fakes(train=train, saves=False)
    await unsaved.run(settings(num_epochs=3))
    assert not any(isinstance(m, SnapshotRequest) for m in unsaved.work[0])


@pytest.mark.parametrize("server", [False, True])
async def test_sends_no_more_steps_ahead_than_its_depth(autojump_clock, server):
    fakes = Fakes(devices=1 + server, server=server, train=epoch_of(0, [4] * 20), work_buffer=100,
                  silent_devices=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(fakes.run, settings(num_epochs=1, devices=1 + server))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(fakes.work[0]) == (1 if server else 4)


def test_small_batches_go_many_steps_ahead_large_ones_few_and_none_with_a_server():
    assert [steps_in_flight(False, batch_bytes) for batch_bytes in (1, 64 * 192 * 4, 4 << 20, 16 << 20, 1 << 30)] == [
        16, 16, 16, 4, 4]
    assert steps_in_flight(True, 1) == steps_in_flight(True, 1 << 30) == 1


async def test_a_stalled_metric_actor_holds_the_loop_back(autojump_clock):
    fakes = Fakes(train=epoch_of(0, [4] * 20), outputs_buffer=0)  # nobody takes the outputs
    constant = build_schedule("multifactor", 1.0, epoch_size=3, lr_factor=0.1, lr_step_epochs=())
    async with trio.open_nursery() as nursery:
        await nursery.start(fakes.run, settings(num_epochs=1, schedule=constant))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(fakes.work[0]) == 4  # the steps in flight; the first one's outputs wait to be taken
    assert fakes.loaded == 6  # and the batch held back, and the one after it, for which it waits to make room


@pytest.mark.parametrize("what", ["training", "validation"])
async def test_data_that_ends_mid_epoch_is_a_flow_error_and_every_channel_it_sends_on_closes(autojump_clock, what):
    train, val = epoch_of(0, [4, 4]), epoch_of(0, [4], val=True)
    if what == "training":
        train = train[:1]
    else:
        val = val[:1]
    fakes = Fakes(devices=2, server=True, train=train, val=val)
    with pytest.raises(FlowError, match=f"^the {what} data ended before the epoch did$"):
        with unwrapped_errors():
            await fakes.run(settings(num_epochs=1, devices=2))
    assert fakes.all_closed()


async def test_cancelled_while_waiting_for_results_it_closes_every_channel_it_sends_on(autojump_clock):
    fakes = Fakes(train=epoch_of(0, [4] * 3), silent_devices=True)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(fakes.run, settings(num_epochs=1))
            await trio.testing.wait_all_tasks_blocked()
            assert not fakes.all_closed()
            scope.cancel()
    assert scope.cancelled_caught
    assert fakes.all_closed()


def watched_run(accuracies, *, patience=0, min_delta=0.0, best_checkpoint=True, begin_epoch=0, resumed=None):
    """Fakes for a run of len(accuracies) epochs of one batch whose validations score `accuracies`."""
    epochs = range(begin_epoch, len(accuracies))
    fakes = Fakes(train=[m for epoch in epochs for m in epoch_of(epoch, [4])],
                  val=[m for epoch in epochs for m in epoch_of(epoch, [4], val=True)],
                  val_accuracy=accuracies)
    watch = WatchSettings("accuracy", "max", best_checkpoint, patience, min_delta, resumed)
    return fakes, watch


async def test_the_best_checkpoint_follows_the_validation_figures(autojump_clock):
    fakes, watch = watched_run([0.5, 0.7, 0.6, 0.8, 0.8])
    summary = await fakes.run(settings(num_epochs=5, period=2, watch=watch))
    # each epoch's checkpoints are taken after its validation, periodic first
    assert [(save.epoch, save.best) for save in fakes.saved] == [
        (1, ("accuracy", 0.5)), (2, None), (2, ("accuracy", 0.7)), (4, None), (4, ("accuracy", 0.8))]
    an_epoch = ["TrainSlice", "EvalSlice"]
    assert [type(m).__name__ for m in fakes.work[0]] == (
        an_epoch + ["SnapshotRequest"] + an_epoch + ["SnapshotRequest"] + an_epoch
        + an_epoch + ["SnapshotRequest"] + an_epoch)  # one snapshot for the periodic and best checkpoints
    best_at_4 = fakes.saved[4].states["watch"]["best"]
    assert (best_at_4["best"], best_at_4["best_epoch"]) == (0.8, 3)
    assert fakes.saved[3].states == fakes.saved[4].states and fakes.saved[4].states["num_update"] == 4
    assert summary.epochs == 5 and not any(isinstance(event, EarlyStopped) for event in fakes.events)


async def test_early_stopping_stops_after_patience_epochs_without_an_improvement_over_min_delta(autojump_clock):
    # 0.69 and 0.71 are within 0.02 of 0.7: epochs 2 and 3 bring none, so it stops after epoch 3.
    fakes, watch = watched_run([0.5, 0.7, 0.69, 0.71, 0.6, 0.9], patience=2, min_delta=0.02, best_checkpoint=False)
    summary = await fakes.run(settings(num_epochs=6, watch=watch))
    assert fakes.events[-1] == EarlyStopped(3, "accuracy", 0.7, 1, 2, 0.02)
    assert (summary.epochs, summary.updates) == (4, 4)
    assert fakes.loaded == 4 * 2  # four epochs' batch and EpochEnd taken; the fifth never started
    assert [save.epoch for save in fakes.saved] == [1, 2, 3, 4] and all(save.best is None for save in fakes.saved)
    assert fakes.saved[-1].states["watch"]["early_stop"]["stale_epochs"] == 2
    assert fakes.all_closed()


async def test_a_resumed_run_counts_on_the_epochs_without_improvement(autojump_clock):
    first, watch = watched_run([0.5, 0.7, 0.6, 0.6, 0.9], patience=2)
    await first.run(settings(num_epochs=5, watch=watch))
    resumed_at = first.saved[2 * 2]  # epoch 3's periodic checkpoint (after 2 saves each for epochs 1 and 2)
    assert (resumed_at.epoch, resumed_at.best) == (3, None)
    fakes, watch = watched_run([0.5, 0.7, 0.6, 0.6, 0.9], patience=2, begin_epoch=3,
                               resumed=resumed_at.states["watch"])
    summary = await fakes.run(settings(num_epochs=5, begin_epoch=3, watch=watch))
    assert fakes.events[-1] == EarlyStopped(3, "accuracy", 0.7, 1, 2, 0.0) == first.events[-1]
    assert summary.epochs == 1
