"""The thread budget: torch's intra-op threads beside the loader's decode threads, set in the compute
thread only, for the run only; and the loader decoding the next batch while compute runs this one."""

import threading
from functools import partial

import pytest
import torch
import trio

from flow import builders, thread_budget
from flow.batch_builder import BatchBuilder
from flow.config import config_from_dict
from flow.errors import ConfigError, UserCodeError
from flow.events import BatchEnd, ThreadsOversubscribed
from flow.run import open_run, train
from tests.fixtures import MXNET_FIXTURES
from tests.test_run import synthetic_data

OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.mark.parametrize("cores, decode_threads, cpu_replicas, torch_default, expected", [
    (2, 1, 1, 2, 1),  # this machine with one decode thread
    (2, 4, 1, 2, 1),  # decode threads alone fill the cores: torch still gets one
    (16, 4, 1, 16, 12),  # what the decode threads leave
    (16, 4, 1, 8, 8),  # never more than torch's own count (OMP_NUM_THREADS, torchrun's 1, the caller's)
    (16, 4, 2, 16, 6),  # two CPU devices share what is left
    (16, 4, 0, 16, 12),  # GPU devices only: their thread still runs the CPU side of a step
    (8, 0, 1, 8, 8),  # no decode threads (the caller's batches, data.benchmark)
])
def test_the_budget_gives_torch_the_cores_the_decode_threads_leave(cores, decode_threads, cpu_replicas,
                                                                   torch_default, expected):
    assert thread_budget.torch_threads(cores, decode_threads, cpu_replicas, torch_default) == expected


def test_oversubscribed_counts_every_device_s_threads_and_the_decode_threads():
    assert not thread_budget.oversubscribed(1, 1, 1, 2)
    assert thread_budget.oversubscribed(2, 1, 1, 2)
    assert thread_budget.oversubscribed(2, 2, 0, 3)
    assert not thread_budget.oversubscribed(6, 2, 4, 16)


def test_intra_op_threads_sets_the_count_inside_and_puts_back_the_thread_s_own():
    found = torch.get_num_threads()
    inside = found + 1
    with thread_budget.intra_op_threads(inside):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == found
    with pytest.raises(ZeroDivisionError), thread_budget.intra_op_threads(inside):
        1 / 0
    assert torch.get_num_threads() == found
    with thread_budget.intra_op_threads(0):  # 0: as the thread has them
        assert torch.get_num_threads() == found


@pytest.mark.skipif(not OPENMP, reason="torch's count is per thread under OpenMP; this torch has another backend")
def test_a_count_set_in_one_thread_leaves_another_thread_s_alone():
    """What the compute actor relies on: the count it sets in its worker thread is not the caller's."""
    found = torch.get_num_threads()
    inside, release, seen = threading.Event(), threading.Event(), []

    def worker():
        with thread_budget.intra_op_threads(found + 1):
            torch.ones(4).sum()  # an op in this thread, under its count
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(timeout=10)
        assert (seen, torch.get_num_threads()) == ([found + 1], found)  # the main thread's, while the worker's is set
    finally:
        release.set()
        thread.join()
    assert torch.get_num_threads() == found


def test_config_takes_torch_threads_and_refuses_a_negative_count():
    assert config_from_dict({}).train.torch_threads == 0
    assert config_from_dict({"train": {"torch_threads": 3}}).train.torch_threads == 3
    with pytest.raises(ConfigError, match=r"train.torch_threads: expected a non-negative integer.*got -1"):
        config_from_dict({"train": {"torch_threads": -1}})
    with pytest.raises(ConfigError, match=r"it belongs in \[train\]"):
        config_from_dict({"data": {"torch_threads": 1}})


def test_compute_settings_take_the_configured_count_or_the_budget_s(monkeypatch):
    monkeypatch.setattr(thread_budget, "usable_cores", lambda: 6)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)  # the caller's count, read in the caller's thread
    config = config_from_dict({"data": {"data_train": "/t.rec", "data_nthreads": 2}})
    assert builders.loader_threads(config, reads_records=True) == 2
    assert builders.compute_settings(config, 0).torch_threads == 4
    assert builders.compute_settings(config, 0, decode_threads=0).torch_threads == 6  # the caller's own batches
    two = config_from_dict({"data": {"data_nthreads": 2}, "train": {"devices": ["cpu", "cpu"]}})
    assert [builders.compute_settings(two, replica).torch_threads for replica in (0, 1)] == [2, 2]
    synthetic = config_from_dict({"data": {"benchmark": True, "data_nthreads": 2}})
    assert builders.loader_threads(synthetic, reads_records=True) == 0
    configured = config_from_dict({"data": {"data_nthreads": 2}, "train": {"torch_threads": 5}})
    assert builders.compute_settings(configured, 0).torch_threads == 5


def test_a_configured_count_that_oversubscribes_the_cores_is_said_at_the_start(monkeypatch):
    monkeypatch.setattr(thread_budget, "usable_cores", lambda: 4)
    configured = config_from_dict({"data": {"data_nthreads": 2}, "train": {"torch_threads": 3}})
    assert builders.thread_warnings(configured, 2) == [ThreadsOversubscribed(3, 1, 2, 4)]
    assert builders.thread_warnings(configured, 0) == []  # no loader decodes
    assert builders.thread_warnings(config_from_dict({"data": {"data_nthreads": 8}}), 8) == []  # the budget's: never
    gpus = config_from_dict({"train": {"torch_threads": 8, "devices": ["cuda:0"]}})
    assert builders.thread_warnings(gpus, 4) == []


def fresh_thread_count() -> int:
    """The count a thread starts with (torch's process-wide default, which set_num_threads also sets)."""
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


class CountingModel(torch.nn.Module):
    """An mlp that records the intra-op thread count its forward runs under, and raises at `fail_at`."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 4)
        self.counts: list[int] = []
        self.fail_at = fail_at

    def forward(self, data):
        self.counts.append(torch.get_num_threads())
        if len(self.counts) == self.fail_at:
            raise ZeroDivisionError("division by zero")
        return self.fc(data.flatten(1))


def counting_config(torch_threads: int):
    return config_from_dict({"data": {"image_shape": [3, 8, 8], "num_classes": 4, "batch_size": 16},
                             "train": {"num_epochs": 1, "lr": 0.1, "disp_batches": 1, "torch_threads": torch_threads}})


async def test_a_run_computes_under_its_count_and_leaves_the_caller_s_as_found():
    callers, fresh = torch.get_num_threads(), fresh_thread_count()
    model = CountingModel()
    await train(counting_config(callers + 1), model=model, train_data=synthetic_data(epoch_batches=3))
    assert model.counts == [callers + 1] * 3
    assert (torch.get_num_threads(), fresh_thread_count()) == (callers, fresh)


async def test_a_failed_run_leaves_the_caller_s_count_as_found():
    callers, fresh = torch.get_num_threads(), fresh_thread_count()
    model = CountingModel(fail_at=2)
    with pytest.raises(UserCodeError, match="ZeroDivisionError"):
        await train(counting_config(callers + 1), model=model, train_data=synthetic_data(epoch_batches=3))
    assert model.counts == [callers + 1] * 2
    assert (torch.get_num_threads(), fresh_thread_count()) == (callers, fresh)


async def test_a_cancelled_run_leaves_the_caller_s_count_as_found():
    callers, fresh = torch.get_num_threads(), fresh_thread_count()
    model = CountingModel()
    async with open_run(counting_config(callers + 1), model=model, train_data=synthetic_data(epoch_batches=50)) as run:
        async for event in run.events():
            if isinstance(event, BatchEnd):
                run.cancel()
    assert 0 < len(model.counts) < 50 and set(model.counts) == {callers + 1}
    assert (torch.get_num_threads(), fresh_thread_count()) == (callers, fresh)
    # Trio's worker threads, which the compute actor's calls ran in, have their own counts back too.
    assert await trio.to_thread.run_sync(torch.get_num_threads) == callers


@pytest.mark.skipif(not OPENMP, reason="torch's count is per thread under OpenMP; this torch has another backend")
async def test_two_runs_at_once_each_compute_under_their_own_count():
    callers = torch.get_num_threads()
    models = {threads: CountingModel() for threads in (callers + 1, callers + 2)}
    async with trio.open_nursery() as nursery:
        for threads, model in models.items():
            nursery.start_soon(partial(train, counting_config(threads), model=model,
                                       train_data=synthetic_data(epoch_batches=8)))
    assert {threads: set(model.counts) for threads, model in models.items()} == {
        callers + 1: {callers + 1}, callers + 2: {callers + 2}}
    assert torch.get_num_threads() == callers


BATCHES = 6  # of 8 records each: 48 of MXNet's 64x64 JPEGs
OVERLAP_TIMEOUT_S = 20  # a loader that waits for compute fails the test after this, instead of hanging it


class WaitsForTheNextBatch(torch.nn.Module):
    """A model whose forward of training batch n returns only once the loader has decoded batch n+1:
    were the loader to build a batch only after compute is done with the one before, it never would."""

    def __init__(self, decoded: set, changed: threading.Condition):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 64 * 64, 10)
        self.decoded, self.changed = decoded, changed
        self.steps = 0
        self.counts: list[int] = []

    def forward(self, data):
        step, self.steps = self.steps, self.steps + 1
        self.counts.append(torch.get_num_threads())
        if step + 1 < BATCHES:
            with self.changed:
                if not self.changed.wait_for(lambda: step + 1 in self.decoded, timeout=OVERLAP_TIMEOUT_S):
                    raise AssertionError(f"batch {step + 1} was not decoded while step {step} computed")
        return self.fc(data.flatten(1))


async def test_the_loader_decodes_the_next_batch_while_compute_runs_this_one(monkeypatch):
    decoded, changed = set(), threading.Condition()
    fill = BatchBuilder.fill

    def fill_and_tell(builder, job, *args, **kwargs):
        """A decode thread filling a slice of `job`: True once the batch's last slice is in."""
        finished = fill(builder, job, *args, **kwargs)
        if finished:
            with changed:
                decoded.add(job.index)
                changed.notify_all()
        return finished

    monkeypatch.setattr(BatchBuilder, "fill", fill_and_tell)
    config = config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "train.rec"), "image_shape": [3, 64, 64], "num_classes": 10,
                 "batch_size": 8, "num_examples": 8 * BATCHES, "data_nthreads": 1, "prefetch": 1,
                 "shuffle": False},
        "train": {"num_epochs": 1, "lr": 0.01, "disp_batches": 1},
    })
    model = WaitsForTheNextBatch(decoded, changed)
    budget = builders.torch_threads(config, decode_threads=1)
    callers = torch.get_num_threads()
    async with open_run(config, model=model) as run:
        async for event in run.events():
            if isinstance(event, BatchEnd) and event.batch + 1 >= BATCHES:
                run.cancel()  # the rest of the 800-record epoch proves nothing more
    assert model.steps >= BATCHES
    assert set(model.counts) == {budget}  # compute ran under the budget's count, beside the decode thread
    assert torch.get_num_threads() == callers
