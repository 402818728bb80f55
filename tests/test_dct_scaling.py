"""Decoding less: JPEGs decoded at 1/2 or 1/4 size (libjpeg-turbo's DCT scaling) when the geometry
then shrinks them at least that much, the crop window mapped onto the smaller image exactly."""

import dataclasses
import functools

import numpy as np
import pytest

from flow import augment
from flow.augment import AugmentSettings, Resized
from flow.errors import ImageError
from flow.image import decode, encode

RRC = AugmentSettings(random_resized_crop=True, min_random_area=0.08, min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3)


@functools.cache
def photo(height, width, seed=0):
    """Photo-like pixels: smooth shading, fine texture and a few sharp-edged shapes, JPEG quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    pixels = np.full((height, width, 3), 120.0)
    for _ in range(16):
        frequency, angle, phase = rng.uniform(0.5, 40), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        pixels += wave[..., None] * rng.uniform(-30, 30, 3) / (1 + frequency / 10)
    for _ in range(8):
        top, left = rng.integers(0, height - 20), rng.integers(0, width - 20)
        pixels[top:top + rng.integers(10, height // 3), left:left + rng.integers(10, width // 3)] = rng.uniform(0, 255, 3)
    return encode(np.clip(pixels, 0, 255).astype(np.uint8), ".jpg", 90)


def placed(data, settings, params, size):
    out = np.empty((*size, 3), np.uint8)
    augment.place_encoded(data, params, 0, settings, out, 1 << 30)
    return out


@pytest.mark.parametrize("shrink", [2, 4])
def test_a_jpeg_decodes_at_a_dct_scale_to_about_the_mean_of_its_blocks(shrink):
    data = photo(203, 301)  # sides that 2 and 4 do not divide: ceil(side / shrink)
    full = decode(data).astype(float)
    small = decode(data, shrink=shrink)
    assert small.shape == (-(-203 // shrink), -(-301 // shrink), 3)
    rows, columns = 203 // shrink, 301 // shrink
    means = full[:rows * shrink, :columns * shrink].reshape(rows, shrink, columns, shrink, 3).mean(axis=(1, 3))
    assert np.abs(small[:rows, :columns] - means).mean() < 3


def test_only_jpegs_by_2_or_4_and_not_tiny_ones():
    with pytest.raises(ValueError, match="only JPEGs"):
        decode(photo(64, 64), shrink=3)
    with pytest.raises(ValueError, match="only JPEGs"):
        decode(encode(np.zeros((32, 32, 3), np.uint8), ".png"), shrink=2)
    with pytest.raises(ImageError, match="too small"):
        decode(encode(np.zeros((6, 32, 3), np.uint8)), shrink=2)
    with pytest.raises(ImageError, match="over the limit"):
        decode(photo(64, 64), shrink=2, max_pixels=100)


def test_the_shrink_is_what_the_first_resampling_allows_on_both_axes():
    params = augment.draw(RRC, np.random.default_rng(0), 1)
    whole = dataclasses.replace(params, area=np.ones((1, 10)), aspect=np.full((1, 10), 4 / 3),
                                swap=np.zeros((1, 10), bool))  # the whole 480x640 image
    assert augment.dct_shrink(480, 640, whole, 0, RRC, (224, 224)) == 2  # 480 / 224 = 2.1
    assert augment.dct_shrink(480, 640, whole, 0, RRC, (120, 120)) == 4
    assert augment.dct_shrink(480, 640, whole, 0, RRC, (120, 161)) == 2  # 640 / 161 < 4
    assert augment.dct_shrink(447, 596, whole, 0, RRC, (224, 224)) == 1
    resize = AugmentSettings(resize=256, rand_crop=True)
    assert augment.dct_shrink(512, 700, None, 0, resize, (224, 224)) == 2
    assert augment.dct_shrink(1024, 1500, None, 0, resize, (224, 224)) == 4
    assert augment.dct_shrink(500, 1500, None, 0, resize, (224, 224)) == 1
    # Off for filters that take whole pixels, for a warp or pad first, when no window fits, when asked.
    for settings in (dataclasses.replace(resize, inter_method=augment.NEAREST),
                     dataclasses.replace(resize, inter_method=augment.AREA),
                     dataclasses.replace(resize, inter_method=augment.AUTO),  # area, to shrink
                     dataclasses.replace(resize, max_rotate_angle=10), dataclasses.replace(resize, pad=4),
                     dataclasses.replace(resize, dct_scaling=False)):
        assert augment.dct_shrink(1024, 1500, augment.draw(settings, np.random.default_rng(0), 1), 0, settings,
                                  (224, 224)) == 1
    none_fits = dataclasses.replace(params, area=np.full((1, 10), 0.9), aspect=np.full((1, 10), 3.0))
    assert augment.dct_shrink(480, 640, none_fits, 0, RRC, (100, 100)) == 1  # MXNet's fallback crop


def test_a_window_maps_onto_the_smaller_image_exactly():
    """Full-size coordinates divided by the shrink: on an image that is exactly the 2x2 means of
    another, a window at even coordinates is the same resampling as that window halved."""
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for top, left, height, width in ((0, 0, 120, 160), (10, 24, 80, 90), (40, 2, 76, 150)):
        via_shrink, direct = np.empty((23, 31, 3), np.uint8), np.empty((23, 31, 3), np.uint8)
        Resized.whole(small, (120, 160), 2).window_into(top, left, height, width, via_shrink, augment.BILINEAR)
        Resized.whole(small).window_into(top // 2, left // 2, height // 2, width // 2, direct, augment.BILINEAR)
        assert np.array_equal(via_shrink, direct)
    # Odd coordinates fall between the smaller pixels: a fractional box, not a rounded one.
    odd, rounded = np.empty((23, 31, 3), np.uint8), np.empty((23, 31, 3), np.uint8)
    Resized.whole(small, (120, 160), 2).window_into(11, 25, 79, 91, odd, augment.BILINEAR)
    Resized.whole(small).window_into(6, 13, 40, 46, rounded, augment.BILINEAR)
    assert not np.array_equal(odd, rounded)


@pytest.mark.parametrize("settings, size", [
    (RRC, (112, 112)),
    (dataclasses.replace(RRC, inter_method=augment.BICUBIC), (100, 100)),
    (dataclasses.replace(RRC, inter_method=augment.LANCZOS), (100, 100)),
    (AugmentSettings(resize=128, rand_crop=True), (112, 112)),
])
def test_the_scaled_decode_is_close_to_the_full_decode_and_repeats_by_seed(settings, size):
    """Not bit-identical: the reduced IDCT low-passes where the filter would weigh full-size pixels.
    On these photo-like images the mean abs difference per image stayed <= 1.0 level and 99% of
    pixels within 13 (max 58, at sharp edges); on bench/natural_io.py's photos (bilinear) 0.9 mean,
    4.4 for the worst image, 99% within 22. The bounds here leave room for libjpeg-turbo versions."""
    data = [photo(480, 640, seed) for seed in range(2)] + [photo(700, 500, 3)]
    full = dataclasses.replace(settings, dct_scaling=False)
    rng = np.random.default_rng(0)
    shrinks = set()
    for index in range(12):
        params = augment.draw(settings, rng, 1)
        image = data[index % len(data)]
        shrinks.add(augment.dct_shrink(*decode(image).shape[:2], params, 0, settings, size))
        scaled = placed(image, settings, params, size)
        assert np.array_equal(scaled, placed(image, settings, params, size))
        difference = np.abs(scaled.astype(int) - placed(image, full, params, size))
        assert difference.mean() < 2 and np.percentile(difference, 99) <= 20
    assert {2} <= shrinks  # the draws did take the scaled path
