"""Starting a run leaves the caller's event loop free: the blocking start-up work runs in threads."""

import time
from pathlib import Path

import torch
import trio

from flow.config import config_from_dict
from flow.events import RunStarted
from flow.run import open_run
from tests.fixtures import MXNET_FIXTURES

SLOW_BUILD_SECONDS = 0.3
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def seconds_waiting_for_a_cpu() -> float:
    """How long this thread has been runnable but not running, as Linux counts it (0 where it does not).

    A busy machine holds every thread back so, now and then for tens of ms: not the run's doing.
    """
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def slowly_built_mlp(num_classes, image_shape):
    """An mlp that takes as long to build as a big model (or a slow torch.load): without the GIL, so
    only a build on the Trio thread itself would hold the heartbeat back."""
    time.sleep(SLOW_BUILD_SECONDS)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_shape[1] * image_shape[2], 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, num_classes))


async def test_the_event_loop_is_never_starved_while_a_run_starts_and_trains(tmp_path):
    # Every start-up step: index scans and the label check, the model build, a replica copy, the
    # parameter server's and the devices' optimizers, the loaders, validation and a checkpoint.
    config = config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "val.rec"), "data_val": str(MXNET_FIXTURES / "val.rec"),
                 "image_shape": [3, 32, 32], "num_classes": 10, "batch_size": 100, "data_nthreads": 1},
        "model": {"network": "tests.test_start:slowly_built_mlp"},
        "train": {"num_epochs": 1, "devices": ["cpu", "cpu"], "disp_batches": 1},
        "checkpoint": {"model_prefix": str(tmp_path / "model")},
    })
    period = 0.01
    worst = {"lateness": 0.0, "beats": 0}

    async def heartbeat():
        last, last_waiting = time.perf_counter(), seconds_waiting_for_a_cpu()
        while True:
            await trio.sleep(period)
            now, waiting = time.perf_counter(), seconds_waiting_for_a_cpu()
            worst["lateness"] = max(worst["lateness"], now - last - period - (waiting - last_waiting))
            worst["beats"] += 1
            last, last_waiting = now, waiting

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        await trio.sleep(period)  # the heartbeat is running when the start begins
        async with open_run(config) as run:
            events = [type(event) async for event in run.events()]
            result = await run.wait()
        nursery.cancel_scope.cancel()
    assert events[0] is RunStarted and result.epochs == 1 and result.checkpoints
    assert worst["beats"] >= SLOW_BUILD_SECONDS / period / 2  # it beat while the model was built
    assert worst["lateness"] < 0.05, f"the event loop stalled for {worst['lateness'] * 1000:.0f} ms"
