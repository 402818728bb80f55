"""flow._pixels: the C normalize loop against numpy's float32 arithmetic, and its argument checks."""

import numpy as np
import pytest

from flow import _pixels

MEAN = (123.68, 116.779, 103.939)
INV_STD = tuple((1 / np.array([58.393, 57.12, 57.375], np.float32)).tolist())


def numpy_normalize(images):
    """The same arithmetic in numpy: float32 (x - mean) * inv_std, NHWC -> NCHW."""
    return ((images.astype(np.float32) - np.float32(MEAN)) * np.float32(INV_STD)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("shape", [(5, 6, 7), (1, 1, 1), (3, 64, 64), (2, 33, 17), (0, 4, 4)])
def test_normalize_equals_numpy_bit_for_bit(shape):
    count, height, width = shape
    images = np.random.default_rng(count).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    out = np.full((count, 3, height, width), np.nan, np.float32)
    _pixels.normalize(images, out, MEAN, INV_STD)
    assert np.array_equal(out, numpy_normalize(images))


@pytest.mark.parametrize("shape", [(6, 5, 7), (4, 64, 64), (3, 1, 1), (2, 3, 2)])
def test_normalize_mirrors_the_flagged_images_on_the_way(shape):
    count, height, width = shape
    images = np.random.default_rng(count).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    flags = np.arange(count) % 2 == 0
    out = np.empty((count, 3, height, width), np.float32)
    _pixels.normalize(images, out, MEAN, INV_STD, flags)
    expected = images.copy()
    expected[flags] = images[flags, :, ::-1]
    assert np.array_equal(out, numpy_normalize(expected))


@pytest.mark.parametrize("width", [1, 2, 5, 64])
def test_mirror_flips_the_flagged_images_in_place(width):
    images = np.random.default_rng(width).integers(0, 256, (4, 3, width, 3), dtype=np.uint8)
    flipped = images.copy()
    _pixels.mirror(flipped, np.array([True, False, False, True]))
    assert np.array_equal(flipped[[0, 3]], images[[0, 3], :, ::-1])
    assert np.array_equal(flipped[[1, 2]], images[[1, 2]])


def test_flags_must_be_one_byte_each_and_one_an_image():
    images = np.zeros((3, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 3 one-byte flags"):
        _pixels.mirror(images, np.ones(2, np.bool_))
    with pytest.raises(ValueError, match="expected 3 one-byte flags"):
        _pixels.normalize(images, np.zeros((3, 3, 2, 2), np.float32), MEAN, INV_STD, np.ones(3, np.int32))


def test_normalize_writes_only_its_slice_of_a_batch():
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    batch = np.zeros((10, 3, 8, 8), np.float32)
    _pixels.normalize(images, batch[3:7], MEAN, INV_STD)
    assert np.array_equal(batch[3:7], numpy_normalize(images))
    assert not batch[:3].any() and not batch[7:].any()


@pytest.mark.parametrize("images, out, message", [
    (np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 3, 4, 4), np.float32), "images: expected .* format 'B'"),
    (np.zeros((2, 4, 4, 4), np.uint8), np.zeros((2, 3, 4, 4), np.float32), "images: .* 3 channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3, 4, 4), np.float64), "out: expected .* format 'f'"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3, 4, 5), np.float32), r"out: shape \(2, 3, 4, 5\) does not match"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 3, 4, 4), np.float32), "does not match"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3, 4, 8), np.float32)[..., ::2], "contiguous"),
])
def test_normalize_refuses_what_it_cannot_fill(images, out, message):
    with pytest.raises((ValueError, BufferError), match=message):
        _pixels.normalize(images, out, MEAN, INV_STD)


def test_normalize_refuses_a_read_only_output():
    out = np.zeros((1, 3, 2, 2), np.float32)
    out.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        _pixels.normalize(np.zeros((1, 2, 2, 3), np.uint8), out, MEAN, INV_STD)
