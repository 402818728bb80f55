"""kv_store = dist_sync: two processes on this machine (gloo over loopback) train as one."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from flow import checkpoints
from flow.config import config_from_dict
from flow.errors import ConfigError
from flow.recordio import IRHeader, RecordWriter, pack_img
from flow.run import train
from tests.fixtures import REPO_ROOT
from tests.test_param_server import net_with_a_frozen_layer
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


# Ranks train on a .rec whose two shards differ by a record, so with pad their batch counts differ too
# (500 records: 5 batches of 100; 501: 6). Validation (one batch) loads the final weights into the model.
UNEVEN_SHARDS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, trio
    from pathlib import Path
    from flow.run import train
    from tests.test_param_server import net_with_a_frozen_layer
    from tests.test_run import small_config, synthetic_data

    rank, folder, records = int(os.environ["RANK"]), Path(sys.argv[1]), sys.argv[2]
    net = net_with_a_frozen_layer()
    config = small_config(folder / f"rank{rank}", data={"data_train": records, "batch_size": 100, "num_examples": 0},
                          train={"kv_store": "dist_sync", "lr_step_epochs": [1], "lr_factor": 0.5})
    result = trio.run(lambda: train(config, model=net, val_data=synthetic_data(epoch_batches=1)))
    torch.save(net.state_dict(), folder / f"rank{rank}.pt")
    (folder / f"rank{rank}.json").write_text(json.dumps({"updates": result.updates, "epochs": result.epochs}))
""")


def write_tiny_images(path, count):
    """A .rec (+ .idx) of `count` 8x8 PNGs with labels 0-3."""
    with RecordWriter(path, index=True) as writer:
        for number in range(count):
            image = np.full((8, 8, 3), number % 256, np.uint8)
            writer.write(pack_img(IRHeader(0, float(number % 4), number, 0), image, encoding=".png"))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(script, *arguments, **environment):
    """Runs `script` as ranks 0 and 1 of a dist job; returns their (return code, stderr)."""
    environment = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                   "PYTHONPATH": str(REPO_ROOT), **environment}
    ranks = [subprocess.Popen([sys.executable, "-c", script, *map(str, arguments)], cwd=REPO_ROOT,
                              env={**environment, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    outcomes = []
    for rank in ranks:
        _, errors = rank.communicate(timeout=120)
        outcomes.append((rank.returncode, errors))
    return outcomes


async def test_two_processes_with_dist_sync_match_one_process_on_the_whole_batch(tmp_path):
    await train(small_config(tmp_path / "one", train={"lr_step_epochs": [1], "lr_factor": 0.5}),
                train_data=synthetic_data())
    for returncode, errors in run_ranks(RANK_SCRIPT, tmp_path / "dist"):
        assert returncode == 0, errors
    one = checkpoints.load_checkpoint(str(tmp_path / "one" / "model"), 2)[0]
    dist = checkpoints.load_checkpoint(str(tmp_path / "dist" / "model"), 2)[0]
    for name, tensor in one.items():
        torch.testing.assert_close(dist[name], tensor, atol=1e-5, rtol=0)
    # Only rank 0 writes: one event log, one set of checkpoints.
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "model-0001.manifest.json", "model-0001.params", "model-0001.states", "model-0002.manifest.json",
        "model-0002.params", "model-0002.states", "model-events.msgpack", "model-model.json"]


async def test_uneven_shards_run_the_same_batches_on_every_rank_as_fit_py_resize_iter(tmp_path):
    records = write_tiny_images(tmp_path / "tiny.rec", 1001)
    for returncode, errors in run_ranks(UNEVEN_SHARDS_SCRIPT, tmp_path, records):
        assert returncode == 0, errors
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    # fit.py's epoch size under dist: ceil(int(1001 / 2) / 100) = 5 updates an epoch on every rank.
    assert results == [{"updates": 10, "epochs": 2}] * 2
    weights = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for name, tensor in weights[0].items():
        assert torch.equal(weights[1][name], tensor), name
    saved = checkpoints.load_checkpoint(str(tmp_path / "rank0" / "model"), 2)[0]
    assert all(torch.equal(saved[name], tensor) for name, tensor in weights[0].items())
    initial = net_with_a_frozen_layer().state_dict()
    assert torch.equal(saved["1.weight"], initial["1.weight"]) and torch.equal(saved["1.bias"], initial["1.bias"])
    assert not torch.equal(saved["3.weight"], initial["3.weight"])


async def test_when_one_process_fails_the_other_stops_with_a_one_line_reason(tmp_path):
    returncodes, errors = zip(*run_ranks(RANK_SCRIPT, tmp_path, FAIL="1,3"))
    assert returncodes != (0, 0)
    assert "OSError: rank 1's data is unreadable" in errors[1]
    last_line = errors[0].strip().splitlines()[-1]  # torch prefixes "[rank0]: " to a failed rank's lines
    assert "flow.errors.DistributedError: update " in last_line
    assert "the gradient all_reduce failed, so another process of the job (rank 1) stopped or hangs (" in last_line


async def test_dist_sync_without_a_launcher_says_how_to_start_it(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = config_from_dict({"train": {"kv_store": "dist_sync"}, "data": {"image_shape": [3, 8, 8]}})
    with pytest.raises(ConfigError, match="start them with torchrun"):
        await train(config, train_data=synthetic_data())


HANGING_RANK_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import trio
    from pathlib import Path
    from flow.run import train
    from tests.test_run import small_config, synthetic_data

    rank = int(os.environ["RANK"])
    whole = synthetic_data()

    def my_part(epoch):  # rank 1 hangs (in no call flow could interrupt) before its fourth batch
        async def batches():
            index = 0
            async for data, label in whole(epoch):
                if rank == 1 and index == 3:
                    time.sleep(120)
                yield data[rank * 8:(rank + 1) * 8], label[rank * 8:(rank + 1) * 8]
                index += 1
        return batches()

    config = small_config(Path(sys.argv[1]), data={"batch_size": 8}, train={"kv_store": "dist_sync", "dist_timeout": 2})
    trio.run(lambda: train(config, train_data=my_part))
""")


async def test_a_peer_that_hangs_ends_the_others_after_dist_timeout_naming_its_rank(tmp_path):
    environment = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                   "PYTHONPATH": str(REPO_ROOT)}
    ranks = [subprocess.Popen([sys.executable, "-c", HANGING_RANK_SCRIPT, str(tmp_path)], cwd=REPO_ROOT,
                              env={**environment, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        started = time.monotonic()
        _, errors = ranks[0].communicate(timeout=60)
        waited = time.monotonic() - started
    finally:
        for rank in ranks:
            rank.kill()
            rank.communicate()
    assert ranks[0].returncode != 0
    last_line = errors.strip().splitlines()[-1]
    # Which update: the first whose all_reduce rank 1 misses (its event loop hangs, batches prefetched or not).
    assert re.search(r"DistributedError: update \d+: the gradient all_reduce failed, so another process of the "
                     r"job \(rank 1\) stopped or hangs \(Timed out", last_line), errors
    assert waited < 90  # gloo's own timeout is 30 minutes (the bound leaves room for start-up on a busy machine)
