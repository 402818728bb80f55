"""Which records each batch of an epoch holds: the shard, the epoch's order, and MXNet's cut into
batches (`last_batch`), optionally resized to a fixed number of batches (fit.py's ResizeIter).

A batch is (record positions, pad): its last `pad` samples are filler, not part of the epoch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from flow.seeding import derive_seed

EpochBatches = list[tuple[np.ndarray, int]]


def shard(bad: np.ndarray, num_parts: int, part_index: int) -> tuple[np.ndarray, int]:
    """The positions of shard `part_index`'s good records, and how many bad ones it leaves out.

    A shard is a contiguous run of records, as MXNet's num_parts / part_index; sizes differ by at
    most one record. `bad` marks the records (all of them, good or bad) not to use.
    """
    count = len(bad)
    begin, end = count * part_index // num_parts, count * (part_index + 1) // num_parts
    positions = np.arange(begin, end)
    good = positions[~bad[begin:end]]
    return good, len(positions) - len(good)


def epoch_order(positions: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of `positions`: a permutation seeded by the seed and the epoch only, so a
    resumed run replays it."""
    if not shuffle:
        return positions
    return positions[np.random.default_rng(derive_seed(seed, "shuffle", epoch)).permutation(len(positions))]


def batches_of_epoch(order_of: Callable[[int], np.ndarray], count: int, batch_size: int, last_batch: str,
                     epoch: int) -> EpochBatches:
    """(record positions, pad) of each batch of `epoch`, given each epoch's order of `count` records.

    pad: the last short batch is filled up from the start of the epoch's order. discard: it is
    dropped. roll_over: the epochs are one stream, cut into whole batches; an epoch's batches
    are those that end inside it, so its first batch starts with the previous epoch's leftovers
    (recomputed from the seed, so a resumed run gets them too).
    """
    if count == 0:
        return []
    if last_batch == "roll_over":
        first, stop = epoch * count // batch_size, (epoch + 1) * count // batch_size
        begin, end = first * batch_size, stop * batch_size  # positions in the stream of all epochs
        if end == begin:
            return []
        stream = np.concatenate([order_of(e) for e in range(begin // count, (end - 1) // count + 1)])
        offset = begin // count * count
        return [(stream[b - offset:b - offset + batch_size], 0) for b in range(begin, end, batch_size)]
    order = order_of(epoch)
    batches = [(order[b:b + batch_size], 0) for b in range(0, count - batch_size + 1, batch_size)]
    rest = count % batch_size
    if rest and last_batch == "pad":
        filler = np.resize(order, batch_size - rest)  # cycles through the order when it is shorter than the fill
        batches.append((np.concatenate([order[count - rest:], filler]), batch_size - rest))
    return batches


def resized(batches: EpochBatches, count: int) -> EpochBatches:
    """fit.py's ResizeIter: exactly `count` batches, so that every process of a dist job runs the same
    number of updates (each update is an all_reduce they all take part in) whatever its shard holds.

    Longer: cut short; shorter: started over from the first batch. `batches` must not be empty.
    """
    return [batches[index % len(batches)] for index in range(count)]
