"""Batch arrays: one is filled again only once nothing outside the pool refers to it."""

import numpy as np
import torch

from flow.batch_arrays import BatchArrays


def address(array):
    return array.__array_interface__["data"][0]


def test_an_array_is_reused_once_nothing_outside_refers_to_it():
    arrays = BatchArrays((4, 2), np.float32, keep=3)
    first = arrays.take()
    held = address(first)
    view = torch.from_numpy(first)[1:3]  # a view of a tensor of it: the consumer's still
    del first
    second = arrays.take()
    assert address(second) != held and second.shape == (4, 2) and second.dtype == np.float32
    del view, second
    assert address(arrays.take()) == held


def test_a_consumer_that_holds_many_gets_fresh_arrays_past_keep():
    arrays = BatchArrays((2,), np.uint8, keep=3)
    held = [arrays.take() for _ in range(6)]
    assert len({address(array) for array in held}) == 6
    kept = {address(array) for array in held[:3]}
    del held
    again = [arrays.take() for _ in range(3)]
    assert {address(array) for array in again} == kept


def test_pinned_arrays_are_views_of_one_tensor_each_and_reused_alike(monkeypatch):
    allocated = []
    plain_empty = torch.empty

    def empty_unpinned(*args, pin_memory=False, **kwargs):  # torch without CUDA cannot pin
        allocated.append(pin_memory)
        return plain_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty_unpinned)
    arrays = BatchArrays((4, 3, 2), np.float32, keep=3, pinned=True)
    first = arrays.take()
    assert allocated == [True] and first.shape == (4, 3, 2) and first.dtype == np.float32
    held = address(first)
    batch = torch.from_numpy(first)  # as the loader hands it on
    del first
    assert address(arrays.take()) != held and len(allocated) == 2
    del batch
    assert address(arrays.take()) == held and len(allocated) == 2
