"""kv_store = dist_sync: two processes on this machine (gloo over loopback) train as one."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from flow import checkpoints
from flow.config import config_from_dict
from flow.errors import ConfigError
from flow.run import train
from tests.fixtures import REPO_ROOT
from tests.test_run import small_config, synthetic_data

RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    import trio
    from flow.run import train
    from tests.test_run import small_config, synthetic_data
    from pathlib import Path

    async def aiter_enumerate(iterable):
        index = 0
        async for item in iterable:
            yield index, item
            index += 1

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    failing_rank, fail_at = map(int, os.environ.get("FAIL", "-1,0").split(","))
    whole = synthetic_data()

    def my_part(epoch):  # this process's slice of each global batch of 16
        async def batches():
            async for index, (data, label) in aiter_enumerate(whole(epoch)):
                if rank == failing_rank and index == fail_at:
                    raise OSError(f"rank {rank}'s data is unreadable")
                size = len(label) // world
                yield data[rank * size:(rank + 1) * size], label[rank * size:(rank + 1) * size]
        return batches()

    config = small_config(Path(sys.argv[1]), data={"batch_size": 16 // world},
                          train={"kv_store": "dist_sync", "lr_step_epochs": [1], "lr_factor": 0.5})
    trio.run(lambda: train(config, train_data=my_part))
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_two_processes_with_dist_sync_match_one_process_on_the_whole_batch(tmp_path):
    await train(small_config(tmp_path / "one", train={"lr_step_epochs": [1], "lr_factor": 0.5}),
                train_data=synthetic_data())
    environment = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                   "PYTHONPATH": str(REPO_ROOT)}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path / "dist")], cwd=REPO_ROOT,
                              env={**environment, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for rank in ranks:
        _, errors = rank.communicate(timeout=120)
        assert rank.returncode == 0, errors
    one = checkpoints.load_checkpoint(str(tmp_path / "one" / "model"), 2)[0]
    dist = checkpoints.load_checkpoint(str(tmp_path / "dist" / "model"), 2)[0]
    for name, tensor in one.items():
        torch.testing.assert_close(dist[name], tensor, atol=1e-5, rtol=0)
    # Only rank 0 writes: one event log, one set of checkpoints.
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "model-0001.params", "model-0001.states", "model-0002.params", "model-0002.states",
        "model-events.msgpack", "model-model.json"]


async def test_when_one_process_fails_the_other_stops_with_a_one_line_reason(tmp_path):
    environment = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                   "PYTHONPATH": str(REPO_ROOT), "FAIL": "1,3"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path)], cwd=REPO_ROOT,
                              env={**environment, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    errors = [rank.communicate(timeout=120)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] != [0, 0]
    assert "OSError: rank 1's data is unreadable" in errors[1]
    last_line = errors[0].strip().splitlines()[-1]  # torch prefixes "[rank0]: " to a failed rank's lines
    assert "flow.errors.DistributedError: update " in last_line
    assert "the gradient all_reduce failed, so another process of the job stopped or hangs (" in last_line


async def test_dist_sync_without_a_launcher_says_how_to_start_it(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = config_from_dict({"train": {"kv_store": "dist_sync"}, "data": {"image_shape": [3, 8, 8]}})
    with pytest.raises(ConfigError, match="start them with torchrun"):
        await train(config, train_data=synthetic_data())
