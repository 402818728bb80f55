"""flow._pixels: the C loops against numpy versions of the same float32 arithmetic, and their argument checks."""

import colorsys

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


# --------------------------------------------------------------------------- jitter_hls


def rgb_to_hls(rgb):
    """Hue in degrees [0, 360), lightness and saturation in [0, 1], of float32 RGB in [0, 1] (OpenCV's formulas)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    spread = high - low
    total = high + low
    lightness = total / 2
    grey = spread == 0
    safe_spread = np.where(grey, 1, spread)
    saturation = np.where(lightness < 0.5, spread / np.where(grey, 1, total), spread / np.where(grey, 1, 2 - total))
    hue = np.where(high == red, 60 * (green - blue) / safe_spread,
                   np.where(high == green, 120 + 60 * (blue - red) / safe_spread,
                            240 + 60 * (red - green) / safe_spread))
    hue = np.where(hue < 0, hue + 360, hue)
    return np.where(grey, 0, hue), lightness, np.where(grey, 0, saturation)


def hls_to_rgb(hue, lightness, saturation):
    """RGB in [0, 1] (last axis) of hue in degrees and lightness, saturation in [0, 1]."""
    high = np.where(lightness < 0.5, lightness * (1 + saturation), lightness + saturation - lightness * saturation)
    low = 2 * lightness - high

    def channel(angle):
        angle = angle % 360
        return np.where(angle < 60, low + (high - low) * angle / 60,
                        np.where(angle < 180, high,
                                 np.where(angle < 240, low + (high - low) * (240 - angle) / 60, low)))

    return np.stack([channel(hue + 120), channel(hue), channel(hue - 120)], axis=-1)


def numpy_jitter_hls(images, deltas):
    """The reference: the colour augmentation in numpy, whole arrays at a time."""
    hue, lightness, saturation = rgb_to_hls(images.astype(np.float32) / 255)
    deltas = deltas.astype(np.float32)[:, None, None, :]
    hue = np.clip(hue / 2 + deltas[..., 0], 0, 180) * 2
    lightness = np.clip(lightness * 255 + deltas[..., 1], 0, 255) / 255
    saturation = np.clip(saturation * 255 + deltas[..., 2], 0, 255) / 255
    return np.clip(np.rint(hls_to_rgb(hue, lightness, saturation) * 255), 0, 255).astype(np.uint8)


def test_the_reference_hls_conversion_matches_colorsys():
    rgb = np.random.default_rng(1).random((200, 3)).astype(np.float32)
    hue, lightness, saturation = rgb_to_hls(rgb)
    expected = np.array([colorsys.rgb_to_hls(*pixel) for pixel in rgb.astype(float)])
    assert np.allclose(hue / 360, expected[:, 0], atol=1e-4)
    assert np.allclose(lightness, expected[:, 1], atol=1e-5)
    assert np.allclose(saturation, expected[:, 2], atol=1e-4)
    assert np.allclose(hls_to_rgb(hue, lightness, saturation), rgb, atol=1e-5)


@pytest.mark.parametrize("limits", [(36, 50, 50), (180, 255, 255)])
def test_jitter_hls_equals_the_numpy_reference_bit_for_bit(limits):
    rng = np.random.default_rng(sum(limits))
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    images[:, :4] = images[:, :4, :, :1]  # grey pixels: no hue, no saturation
    images[:, 4, :4] = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 255]]
    deltas = rng.integers(-np.array(limits), np.array(limits) + 1, (12, 3))
    deltas[:2] = [limits, [-limit for limit in limits]]  # the clipping ends
    jittered = images.copy()
    _pixels.jitter_hls(jittered, deltas.astype(np.float32))
    assert np.array_equal(jittered, numpy_jitter_hls(images, deltas))
    assert not np.array_equal(jittered, images)


def test_jitter_hls_refuses_deltas_that_do_not_fit():
    with pytest.raises(ValueError, match=r"deltas: expected float32 \(2, 3\)"):
        _pixels.jitter_hls(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="deltas"):
        _pixels.jitter_hls(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 3), np.float32))
