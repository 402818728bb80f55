"""The feed actor: batches from the user's own async iterable, in place of the RecordIO loader.

`source` is an async iterable of batches, iterated once per epoch, or a callable that takes the
epoch number and returns one. A batch is the loader's `Batch` or a `(data, label)` pair of
tensors. The actor speaks the loader's protocol: the epoch's batches, then `EpochEnd`.
"""

from __future__ import annotations

from typing import AsyncIterable, Callable

import torch
import trio

from flow.actors.loader import Batch, EpochEnd
from flow import channels as hand_off
from flow.errors import FlowError
from flow.user_code import user_code_error


async def feed(source: AsyncIterable | Callable[[int], AsyncIterable], send_channel: trio.MemorySendChannel,
               begin_epoch: int = 0, num_epochs: int = 1, begin_batch: int = 0) -> None:
    """`begin_batch`: of the first epoch, the batches from this one on (a run stopped mid-epoch
    resumes there); the source's earlier ones are taken and dropped, so it must repeat its epochs."""
    with send_channel:  # sync close: an async one could let Cancelled hide our error
        for epoch in range(begin_epoch, begin_epoch + num_epochs):
            skip = begin_batch if epoch == begin_epoch else 0
            index = samples = 0
            try:
                batches = aiter(source(epoch) if callable(source) else source)
            except FlowError:  # flow's own error, met inside the user's code: already one line
                raise
            except (Exception, SystemExit) as error:
                raise user_code_error(error, "the custom data source", f"Epoch[{epoch}]") from error
            while True:
                try:
                    item = await anext(batches)
                except StopAsyncIteration:
                    break
                except FlowError:
                    raise
                except (Exception, SystemExit) as error:
                    raise user_code_error(error, "the custom data source", f"Epoch[{epoch}] Batch[{index}]") from error
                if index < skip:
                    index += 1
                    continue
                batch = item if isinstance(item, Batch) else _as_batch(epoch, index, item)
                await hand_off.send(send_channel, batch)
                index += 1
                samples += batch.data.shape[0] - batch.pad
            await send_channel.send(EpochEnd(epoch, index, samples))


def _as_batch(epoch: int, index: int, item) -> Batch:
    try:
        data, label = item
    except (TypeError, ValueError):
        raise FlowError(f"custom data: batch {index} of epoch {epoch} is not a Batch or a (data, label) pair") from None
    return Batch(epoch, index, _tensor(data), _tensor(label), 0)


def _tensor(array) -> torch.Tensor:
    # Tensors pass as they are: torch.as_tensor would be a torch call per array on the Trio thread, every step.
    return array if isinstance(array, torch.Tensor) else torch.as_tensor(array)
