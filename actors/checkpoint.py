"""The checkpoint actor: writes each Save it receives, keeps the last `keep`, announces CheckpointSaved.
A Save marked `best` goes to the best checkpoint instead (`keep` never removes it): BestCheckpointSaved.

Writing happens in a worker thread, so training goes on while the files are written; the
channel into this actor is bounded, so a slow disk holds training back rather than memory.
At its start it removes what a killed run left of the prefix's checkpoints (temporary files,
unfinished epochs). A model with NaN or inf weights is not written: it would be useless to
resume from, and it must not push a good checkpoint out of `keep`; the run ends with an error
naming the epoch, its older checkpoints as they were. A mid-epoch checkpoint (a stopped run's)
prunes nothing; any checkpoint removes the mid-epoch ones before it, which the run has gone past.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from flow import checkpoints
from flow.errors import FlowError
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
    batch: int = 0  # batches of the next epoch done: a stopped run's mid-epoch checkpoint; 0: a whole epoch's
    best: tuple[str, float] | None = None  # (metric, value): the best validation so far, for {prefix}-best


async def checkpoint(settings: CheckpointSettings, save_channel: trio.MemoryReceiveChannel,
                     event_channel: trio.MemorySendChannel) -> None:
    prefix = settings.model_prefix
    with save_channel, event_channel:  # sync close: an async one could let Cancelled hide our error
        await trio.to_thread.run_sync(checkpoints.remove_leftovers, prefix)
        async for save in save_channel:
            if save.best is not None:
                await trio.to_thread.run_sync(checkpoints.save_best_checkpoint, prefix, save.model_state, save.states,
                                              save.model_spec)
                await event_channel.send(BestCheckpointSaved(save.epoch, *save.best,
                                                             str(checkpoints.best_params_path(prefix)),
                                                             str(checkpoints.best_states_path(prefix))))
                continue
            await trio.to_thread.run_sync(_write, settings, save)
            await event_channel.send(CheckpointSaved(
                save.epoch, str(checkpoints.params_path(prefix, save.epoch, save.batch)),
                str(checkpoints.states_path(prefix, save.epoch, save.batch)), save.batch))


def _write(settings: CheckpointSettings, save: Save) -> None:
    prefix = settings.model_prefix
    if (name := checkpoints.non_finite_tensor(save.model_state)) is not None:
        where = f"Epoch[{save.epoch}] Batch[{save.batch}]" if save.batch else f"after Epoch[{save.epoch - 1}]"
        raise FlowError(f"not written: the model {where} has NaN or inf weights (in {name!r}); "
                        f"the checkpoints before it are kept as they were",
                        checkpoints.params_path(prefix, save.epoch, save.batch))
    checkpoints.save_checkpoint(prefix, save.epoch, save.model_state, save.states, save.model_spec, save.batch)
    checkpoints.remove_mid_epoch_checkpoints(prefix, (save.epoch, save.batch))
    if settings.keep and not save.batch:
        checkpoints.prune(prefix, save.epoch, settings.keep)
