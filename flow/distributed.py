"""Several processes training one model: torch.distributed's process group, as MXNet's dist kvstores.

Start every process with torchrun (or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT):

    torchrun --nnodes 2 --nproc-per-node 1 ... -m flow run train.toml --set train.kv_store='"dist_sync"'

Each process reads its own shard of the training data (num_parts = world size, part_index =
rank, as fit.py does), and the parameter servers of all processes sum their gradients with one
all_reduce a step, so every process applies the same update to the same weights. Shards may
differ by a record, and so in batches: as fit.py's ResizeIter, every process runs
ceil(int(num_examples / world size) / batch_size) batches an epoch, its shard's batches cut short
or started over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from flow.errors import ConfigError

_ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Cluster:
    rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def join(kv_store: str, devices: tuple[str, ...], timeout: float = 300.0) -> Cluster:
    """This process's place in the job: (0, 1) for a local kvstore, else from the process group (joined once).

    `timeout` (seconds, train.dist_timeout) bounds the rendezvous and every collective: a peer that
    hangs ends the others after it, rather than after gloo's 30 minutes (NCCL's 10).
    """
    if not kv_store.startswith("dist"):
        return Cluster(0, 1)
    if not dist.is_initialized():
        missing = [name for name in _ENVIRONMENT if name not in os.environ]
        if missing:
            raise ConfigError(f"train.kv_store = {kv_store!r} runs several processes: start them with torchrun "
                              f"({', '.join(missing)} not set)")
        cuda = kv_store == "dist_device_sync" and devices[0].startswith("cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return Cluster(dist.get_rank(), dist.get_world_size())


def leave() -> None:
    """Ends this process's part in the process group, if it joined one (the CLI, at the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()
