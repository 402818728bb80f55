"""The checkpoint actor: writes each Save it receives, keeps the last `keep`, announces CheckpointSaved.
A Save marked `best` goes to the best checkpoint instead (`keep` never removes it): BestCheckpointSaved.

Writing happens in a worker thread, so training goes on while the files are written; the
channel into this actor is bounded, so a slow disk holds training back rather than memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from flow import checkpoints
from flow.events import BestCheckpointSaved, CheckpointSaved


@dataclass(frozen=True)
class CheckpointSettings:
    model_prefix: str
    keep: int  # 0: keep every checkpoint


@dataclass(frozen=True)
class Save:
    epoch: int  # epochs completed, as fit.py numbers checkpoints (the first is 0001)
    model_state: dict
    states: dict
    model_spec: dict | None
    best: tuple[str, float] | None = None  # (metric, value): the best validation so far, for {prefix}-best


async def checkpoint(settings: CheckpointSettings, save_channel: trio.MemoryReceiveChannel,
                     event_channel: trio.MemorySendChannel) -> None:
    prefix = settings.model_prefix
    with save_channel, event_channel:  # sync close: an async one could let Cancelled hide our error
        async for save in save_channel:
            if save.best is not None:
                await trio.to_thread.run_sync(checkpoints.save_best_checkpoint, prefix, save.model_state, save.states,
                                              save.model_spec)
                await event_channel.send(BestCheckpointSaved(save.epoch, *save.best,
                                                             str(checkpoints.best_params_path(prefix)),
                                                             str(checkpoints.best_states_path(prefix))))
                continue
            await trio.to_thread.run_sync(checkpoints.save_checkpoint, prefix, save.epoch, save.model_state,
                                          save.states, save.model_spec)
            if settings.keep:
                for old_epoch in checkpoints.saved_epochs(prefix)[: -settings.keep]:
                    checkpoints.remove_checkpoint(prefix, old_epoch)
            await event_channel.send(CheckpointSaved(save.epoch, str(checkpoints.params_path(prefix, save.epoch)),
                                                     str(checkpoints.states_path(prefix, save.epoch))))
