"""flow.augment: ImageRecordIter's augmentations, on single images and on batch slices."""

import numpy as np
import pytest

from flow import augment
from flow.augment import AugmentSettings
from flow.errors import ImageError

LEVEL_3 = AugmentSettings(rand_crop=True, rand_mirror=True, max_random_h=36, max_random_s=50, max_random_l=50,
                          max_rotate_angle=10, max_shear_ratio=0.1, max_aspect_ratio=0.25)


def random_images(count, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_draw_repeats_by_seed_and_stays_in_range():
    first = augment.draw(LEVEL_3, np.random.default_rng(5), 500)
    again = augment.draw(LEVEL_3, np.random.default_rng(5), 500)
    other = augment.draw(LEVEL_3, np.random.default_rng(6), 500)
    assert all(np.array_equal(getattr(first, name), getattr(again, name)) for name in first.__dataclass_fields__)
    assert not np.array_equal(first.angle, other.angle)
    assert first.angle.min() == -10 and first.angle.max() == 10
    assert np.abs(first.shear).max() <= 0.1 and np.abs(first.ratio - 1).max() <= 0.25
    # H, L, S: MXNet truncates the uniform draw in (-max, max) towards zero, so |delta| < max.
    assert np.abs(first.hls).max(axis=0).tolist() == [35, 49, 49]
    assert 0.3 < first.mirror.mean() < 0.7
    assert not augment.draw(AugmentSettings(), np.random.default_rng(5), 50).mirror.any()
    assert len(first[10:20]) == 10 and np.array_equal(first[10:20].scale, first.scale[10:20])


def test_centre_and_random_crop():
    image = random_images(1, 10, 12)[0]
    out = np.empty((6, 8, 3), np.uint8)
    augment.crop_into(image, 0.99, 0.99, False, out)
    assert np.array_equal(out, image[2:8, 2:10])
    corners = set()
    for where in (0.0, 0.5, 0.999):
        augment.crop_into(image, where, where, True, out)
        corners.add(next((top, left) for top in range(5) for left in range(5)
                         if np.array_equal(out, image[top:top + 6, left:left + 8])))
    assert corners == {(0, 0), (2, 2), (4, 4)}  # the whole free range, ends included
    with pytest.raises(ImageError, match="smaller than the output"):
        augment.crop_into(image, 0, 0, False, np.empty((11, 8, 3), np.uint8))


def test_resize_shorter_side_rounds_down_like_mxnet():
    assert augment.resize_shorter(random_images(1, 30, 45)[0], 20).shape == (20, 30, 3)
    assert augment.resize_shorter(random_images(1, 47, 31)[0], 20).shape == (30, 20, 3)  # 20 * 47 // 31
    image = random_images(1, 16, 16)[0]
    assert augment.resize_shorter(image, 16) is image


def test_pad_fills_the_border():
    padded = augment.pad(random_images(1, 4, 5)[0], 2, 127)
    assert padded.shape == (8, 9, 3)
    assert (padded[:2] == 127).all() and (padded[:, -2:] == 127).all()


def test_warp_identity_scale_and_rotation():
    image = random_images(1, 16, 16)[0]
    assert np.array_equal(augment.warp(image, 0.0, 0, 1.0, 1.0, 127), image)
    assert augment.warp(random_images(1, 20, 30)[0], 0.0, 0, 0.5, 1.0, 127).shape == (10, 15, 3)
    # MXNet's map sends source (x, y) to (y, width - x) for 90 degrees: rot90 one row down.
    rotated = augment.warp(image, 0.0, 90, 1.0, 1.0, 127).astype(int)
    assert np.abs(rotated[1:] - np.rot90(image)[:-1].astype(int)).max() <= 1
    sheared = augment.warp(image, 0.1, 0, 1.0, 1.0, 127)
    assert sheared.shape == image.shape and not np.array_equal(sheared, image)
    with pytest.raises(ImageError, match="random scale"):
        augment.warp(image, 0.0, 0, 0.01, 1.0, 127)


def test_hls_jitter():
    images = random_images(3, 8, 8)
    unchanged = images.copy()
    augment.jitter_hls(unchanged, np.zeros((3, 3), int))
    assert np.abs(unchanged.astype(int) - images).max() <= 1
    brighter = images.copy()
    augment.jitter_hls(brighter, np.array([[0, 40, 0]] * 3))
    assert brighter.astype(float).mean() > images.mean() + 20
    grey = images.copy()
    augment.jitter_hls(grey, np.array([[0, 0, -255]] * 3))  # no saturation left: every pixel grey
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    flat = np.full((1, 4, 4, 3), 90, np.uint8)
    augment.jitter_hls(flat, np.array([[30, 0, 0]]))  # a hue shift leaves grey grey
    assert (flat == 90).all()


def test_mirror_flips_only_the_flagged_images():
    images = random_images(4, 5, 6)
    flipped = images.copy()
    augment.mirror(flipped, np.array([True, False, True, False]))
    assert np.array_equal(flipped[0], images[0, :, ::-1]) and np.array_equal(flipped[2], images[2, :, ::-1])
    assert np.array_equal(flipped[1], images[1]) and np.array_equal(flipped[3], images[3])


def test_finish_into_float_equals_finishing_then_normalizing():
    images = random_images(6, 8, 9)
    params = augment.draw(LEVEL_3, np.random.default_rng(4), 6)
    mean, inv_std = np.array([123.68, 116.779, 103.939], np.float32), 1 / np.array([58.4, 57.1, 57.4], np.float32)
    fused, separate = np.empty((6, 3, 8, 9), np.float32), np.empty((6, 3, 8, 9), np.float32)
    augment.finish(images.copy(), params, LEVEL_3, fused, mean, inv_std)
    finished = images.copy()
    augment.finish(finished, params, LEVEL_3)
    augment.normalize(finished, separate, mean, inv_std)
    assert params.mirror.any() and np.array_equal(fused, separate)


def test_normalize_to_nchw_float():
    images = random_images(5, 6, 7)
    mean = np.array([123.68, 116.779, 103.939], np.float32)
    std = np.array([58.4, 57.1, 57.4], np.float32)
    out = np.empty((5, 3, 6, 7), np.float32)
    augment.normalize(images, out, mean, 1 / std)
    assert np.allclose(out, ((images - mean) / std).transpose(0, 3, 1, 2), atol=1e-5)


@pytest.mark.parametrize("settings", [
    AugmentSettings(),
    AugmentSettings(resize=40),
    AugmentSettings(rand_crop=True, rand_mirror=True, pad=4),
    AugmentSettings(rand_crop=True, rand_mirror=True, max_random_h=36, max_random_s=50, max_random_l=50),
    LEVEL_3,
    AugmentSettings(rand_crop=True, min_random_scale=0.9, max_random_scale=1.3),
], ids=["none", "resize", "crop-pad", "level-2", "level-3", "scale"])
def test_a_slice_comes_out_at_the_output_size_and_repeats_by_seed(settings):
    sources = random_images(6, 40, 48, seed=3)

    def run(seed):
        params = augment.draw(settings, np.random.default_rng(seed), len(sources))
        out = np.zeros((len(sources), 32, 32, 3), np.uint8)
        for index, image in enumerate(sources):
            augment.place(image, params, index, settings, out[index])
        augment.finish(out, params, settings)
        return out

    first = run(7)
    assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, run(7))
    if settings.random:
        assert not np.array_equal(first, run(8))
