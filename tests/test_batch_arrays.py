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
