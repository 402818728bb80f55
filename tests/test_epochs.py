"""Which records each batch of an epoch holds: the shard, the seeded order, MXNet's last_batch, ResizeIter."""

import numpy as np

from flow.epochs import batches_of_epoch, epoch_order, resized, shard


def orders(count, seed=3, shuffle=True):
    positions = np.arange(count)
    return lambda epoch: epoch_order(positions, seed, epoch, shuffle)


def flat(batches):
    return np.concatenate([positions for positions, _ in batches]).tolist()


def test_shards_together_hold_every_good_record_once():
    bad = np.zeros(103, dtype=bool)
    bad[[5, 40, 41]] = True
    parts = [shard(bad, 3, part) for part in range(3)]
    assert [len(positions) + skipped for positions, skipped in parts] == [34, 34, 35]  # contiguous, sizes within one
    assert [skipped for _, skipped in parts] == [1, 2, 0]
    assert np.concatenate([positions for positions, _ in parts]).tolist() == sorted(set(range(103)) - {5, 40, 41})


def test_the_order_is_a_permutation_seeded_by_the_seed_and_the_epoch_only():
    positions = np.arange(10, 74)
    run = [epoch_order(positions, 3, epoch, True).tolist() for epoch in range(3)]
    assert all(sorted(order) == positions.tolist() for order in run)
    assert run[0] != run[1] != run[2]
    assert epoch_order(positions, 3, 2, True).tolist() == run[2]  # a resumed run replays it
    assert epoch_order(positions, 4, 0, True).tolist() != run[0]
    assert epoch_order(positions, 3, 0, False) is positions


def test_pad_fills_the_last_batch_from_the_start_of_the_epochs_order():
    order_of = orders(50)
    batches = batches_of_epoch(order_of, 50, 16, "pad", 0)
    assert [pad for _, pad in batches] == [0, 0, 0, 14]
    assert flat(batches) == order_of(0).tolist() + order_of(0).tolist()[:14]
    ((tiny, pad),) = batches_of_epoch(orders(5, shuffle=False), 5, 16, "pad", 0)
    assert pad == 11 and tiny.tolist() == [0, 1, 2, 3, 4] * 3 + [0]


def test_discard_drops_the_short_batch():
    order_of = orders(50)
    batches = batches_of_epoch(order_of, 50, 16, "discard", 1)
    assert [pad for _, pad in batches] == [0, 0, 0]
    assert flat(batches) == order_of(1).tolist()[:48]


def test_roll_over_cuts_the_epochs_as_one_stream():
    order_of = orders(50)
    epochs = [batches_of_epoch(order_of, 50, 16, "roll_over", epoch) for epoch in range(4)]
    stream = np.concatenate([order_of(epoch) for epoch in range(4)]).tolist()
    assert [len(batches) for batches in epochs] == [3, 3, 3, 3]  # 200 records: 12 batches, 8 left for epoch 4
    assert [flat(batches) for batches in epochs] == [stream[48 * epoch:48 * (epoch + 1)] for epoch in range(4)]
    assert flat(epochs[1])[:2] == order_of(0).tolist()[48:]  # epoch 0's leftovers start epoch 1
    assert all(pad == 0 for batches in epochs for _, pad in batches)
    # A batch larger than an epoch: it ends in epoch 1, so epoch 0 has none.
    assert batches_of_epoch(order_of, 50, 64, "roll_over", 0) == []
    assert flat(batches_of_epoch(order_of, 50, 64, "roll_over", 1)) == stream[:64]


def test_no_records_no_batches():
    assert batches_of_epoch(orders(0), 0, 16, "pad", 0) == []


def test_resized_cuts_a_longer_epoch_short_and_cycles_a_shorter_one():
    batches = ["first", "second", "last"]
    assert resized(batches, 2) == ["first", "second"]
    assert resized(batches, 5) == ["first", "second", "last", "first", "second"]
