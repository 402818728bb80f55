"""flow.augment: ImageRecordIter's augmentations, on single images and on batch slices."""

import numpy as np
import pytest
from PIL import Image

from flow import augment
from flow.augment import AugmentSettings
from flow.errors import ImageError

# data.py's --use-imagenet-data-augmentation set.
IMAGENET = AugmentSettings(random_resized_crop=True, min_random_area=0.08, min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3,
                           brightness=0.4, contrast=0.4, saturation=0.4, pca_noise=0.1, rand_mirror=True)
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
    IMAGENET,
    AugmentSettings(resize=36, random_resized_crop=True, min_random_area=0.3, min_aspect_ratio=0.75,
                    max_aspect_ratio=4 / 3, inter_method=10),
    AugmentSettings(rand_crop=True, min_crop_size=20, max_crop_size=38, inter_method=9),
    AugmentSettings(max_img_size=36, min_img_size=34, rand_crop=True, inter_method=2),
], ids=["none", "resize", "crop-pad", "level-2", "level-3", "scale", "imagenet", "rrc-resize-random-method",
        "crop-size", "img-size"])
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


def mxnet_rrc_windows(height, width, count, seed, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
    """ImageRecordIter's random_resized_crop loop, transcribed on its own (None: MXNet's fallback)."""
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        for _ in range(10):
            target = height * width * rng.uniform(*area)
            ratio = rng.uniform(*aspect)
            crop_height, crop_width = int(np.floor(np.sqrt(target / ratio) + 0.5)), int(np.floor(np.sqrt(target * ratio) + 0.5))
            if rng.random() > 0.5:
                crop_height, crop_width = crop_width, crop_height
            if crop_height <= height and crop_width <= width:
                windows.append((crop_height, crop_width))
                break
        else:
            windows.append(None)
    return windows


def test_random_resized_crop_windows_follow_mxnets_distribution():
    height, width, count = 375, 500, 4000
    params = augment.draw(IMAGENET, np.random.default_rng(1), count)
    windows = [augment.rrc_window(height, width, params, index) for index in range(count)]
    assert all(window is not None for window in windows)  # on a 4:3 photo some try always fits
    expected = mxnet_rrc_windows(height, width, count, 2)
    for sample in (windows, expected):
        assert all(top >= 0 and left >= 0 and top + h <= height and left + w <= width
                   for top, left, h, w in (window if len(window) == 4 else (0, 0, *window) for window in sample))

    def histograms(sample):
        sizes = np.array([window[-2:] for window in sample], dtype=float)
        area = sizes[:, 0] * sizes[:, 1] / (height * width)
        aspect = sizes[:, 1] / sizes[:, 0]
        return (np.histogram(area, bins=10, range=(0, 1))[0] / len(sample),
                np.histogram(aspect, bins=8, range=(0.7, 1.4))[0] / len(sample), area, aspect)

    ours_area, ours_aspect, area, aspect = histograms(windows)
    theirs_area, theirs_aspect, _, _ = histograms(expected)
    assert np.abs(ours_area - theirs_area).max() < 0.03 and np.abs(ours_aspect - theirs_aspect).max() < 0.03
    assert 0.07 < area.min() and area.max() <= 1.0 and 0.72 < aspect.min() and aspect.max() < 1.37
    tops = np.array([window[0] / max(1, height - window[2]) for window in windows if window[2] < height - 50])
    assert 0.4 < tops.mean() < 0.6  # placed uniformly in the free range


def test_random_resized_crop_falls_back_to_mxnets_centre_crop():
    settings = AugmentSettings(random_resized_crop=True, min_random_area=0.9, min_aspect_ratio=3.0, max_aspect_ratio=4.0)
    image = random_images(1, 40, 40)[0]
    params = augment.draw(settings, np.random.default_rng(0), 1)
    assert augment.rrc_window(40, 40, params, 0) is None  # no 3:1-4:1 window of 90% of a square fits
    out = np.empty((32, 32, 3), np.uint8)
    augment.place(image, params, 0, settings, out)
    assert np.array_equal(out, image[4:36, 4:36])
    # Smaller than the output: scaled up first (the height, then the width in proportion), as MXNet.
    small = random_images(1, 20, 30)[0]
    assert augment.upscaled_shape(20, 30, 32, 32) == (32, 48)
    augment.place(small, params, 0, settings, out)
    assert np.array_equal(out, augment.resize_shorter(small, 32)[:, 8:40])


def test_random_resized_crop_draws_follow_the_settings():
    params = augment.draw(IMAGENET, np.random.default_rng(3), 2000)
    assert params.area.shape == (2000, augment.RRC_TRIES)
    assert 0.08 <= params.area.min() and params.area.max() <= 1.0
    assert 0.75 <= params.aspect.min() and params.aspect.max() <= 4 / 3
    assert 0.45 < params.swap.mean() < 0.55
    plain = augment.draw(LEVEL_3, np.random.default_rng(5), 50)
    assert (plain.area == 1).all() and (plain.alphas == 1).all() and (plain.pca == 0).all()
    # Turning the new augmenters on leaves the draws of the others as they were.
    more = augment.draw(AugmentSettings(**{**LEVEL_3.__dict__, "brightness": 0.4, "pca_noise": 0.1}),
                        np.random.default_rng(5), 50)
    assert np.array_equal(more.angle, plain.angle) and np.array_equal(more.hls, plain.hls)


def test_crop_size_square_resized_to_the_output():
    settings = AugmentSettings(min_crop_size=10, max_crop_size=30, rand_crop=True)
    params = augment.draw(settings, np.random.default_rng(0), 500)
    assert params.crop_size.min() == 10 and params.crop_size.max() == 30
    image = random_images(1, 30, 40)[0]
    out = np.empty((16, 16, 3), np.uint8)
    augment.place(image, params, 0, settings, out)
    top, left, size, _ = augment.crop_size_window(30, 40, int(params.crop_size[0]), True,
                                                  float(params.crop_y[0]), float(params.crop_x[0]))
    window = image[top:top + size, left:left + size]
    assert np.array_equal(out, np.asarray(Image.fromarray(window).resize((16, 16), Image.Resampling.BILINEAR)))
    assert augment.crop_size_window(30, 40, 20, False, 0.9, 0.9) == (5, 10, 20, 20)  # centred without rand_crop
    with pytest.raises(ImageError, match="max_crop_size"):
        augment.crop_size_window(30, 40, 31, False, 0, 0)


def test_colour_jitter():
    image = random_images(1, 16, 16)[0]
    same = image.copy()
    augment.jitter_colour(same, np.ones(3, np.float32), np.arange(3))
    assert np.array_equal(same, image)
    brighter = image.copy()
    augment.jitter_colour(brighter, np.array([1.4, 1, 1], np.float32), np.arange(3))
    assert np.array_equal(brighter, np.clip(np.rint(image * np.float32(1.4)), 0, 255).astype(np.uint8))
    flat = image.copy()  # contrast 0: every pixel the mean grey
    augment.jitter_colour(flat, np.array([1, 0, 1], np.float32), np.arange(3))
    assert len(np.unique(flat)) == 1 and abs(int(flat[0, 0, 0]) - augment.grey(image).mean()) <= 0.5
    grey = image.copy()  # saturation 0: grey pixels, MXNet's BGR weights (0.299 on blue)
    augment.jitter_colour(grey, np.array([1, 1, 0], np.float32), np.arange(3))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert augment.grey(np.array([[[0, 0, 255]]], np.uint8))[0, 0] == 76  # round(0.299 * 255)
    # The order matters: brightness then contrast differs from contrast then brightness (clipping).
    first, second = image.copy(), image.copy()
    augment.jitter_colour(first, np.array([1.6, 1.5, 1], np.float32), np.array([0, 1, 2]))
    augment.jitter_colour(second, np.array([1.6, 1.5, 1], np.float32), np.array([1, 0, 2]))
    assert not np.array_equal(first, second)


def test_pca_noise():
    image = random_images(1, 8, 8)[0]
    same = image.copy()
    augment.add_lighting(same, np.zeros(3, np.float32))
    assert np.array_equal(same, image)
    lit = image.copy()
    augment.add_lighting(lit, np.array([10.7, -3.2, 0.4], np.float32))
    expected = np.clip(np.trunc(image.astype(np.float32) + np.array([10.7, -3.2, 0.4], np.float32)), 0, 255)
    assert np.array_equal(lit, expected.astype(np.uint8))
    params = augment.draw(IMAGENET, np.random.default_rng(0), 4000)
    # alpha ~ N(0, 0.1) per eigenvector: the offsets' covariance is eigvec diag(0.01) eigvec^T.
    expected_cov = augment.PCA_EIGVEC @ augment.PCA_EIGVEC.T * 0.01
    assert np.allclose(np.cov(params.pca.T), expected_cov, rtol=0.15, atol=0.05)


def test_inter_method_auto_picks_like_mxnet():
    assert augment.pick_method(9, (10, 10), (20, 20)) == augment.BICUBIC
    assert augment.pick_method(9, (20, 20), (10, 10)) == augment.AREA
    assert augment.pick_method(9, (20, 10), (10, 20)) == augment.BILINEAR
    assert augment.pick_method(3, (20, 10), (10, 20)) == augment.AREA
    params = augment.draw(AugmentSettings(inter_method=10), np.random.default_rng(0), 500)
    assert set(np.unique(params.methods).tolist()) == {0, 1, 2, 3, 4}


def test_img_size_limits_clamp_the_warp_canvas():
    image = random_images(1, 40, 48)[0]
    assert augment.warp(image, 0.0, 0, 1.0, 1.0, 127, 0.0, 36.0).shape == (36, 36, 3)
    clamped = augment.warp(image, 0.0, 0, 1.0, 1.0, 127, 44.0, 0.0)
    assert clamped.shape == (44, 48, 3) and (clamped[:2] == 127).all()  # grown canvas: fill round the image
