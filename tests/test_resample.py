"""flow._resample: crop + resize in one pass, against a numpy reference of Pillow's arithmetic and Pillow."""

import ctypes
import math
import mmap

import numpy as np
import pytest
from PIL import Image

from flow import _resample

PRECISION_BITS = 22
FILTERS = {  # MXNet's inter_method number: (Pillow's filter, its support)
    1: (lambda x: max(0.0, 1.0 - abs(x)), 1.0),
    2: (lambda x: (1.5 * abs(x) - 2.5) * x * x + 1 if abs(x) < 1 else
        (((abs(x) - 5) * abs(x) + 8) * abs(x) - 4) * -0.5 if abs(x) < 2 else 0.0, 2.0),
    3: (lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0, 0.5),
    4: (lambda x: (1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x))
        * (1.0 if x == 0 else math.sin(math.pi * x / 3) / (math.pi * x / 3)) if -3 <= x < 3 else 0.0, 3.0),
}
PILLOW = {0: Image.Resampling.NEAREST, 1: Image.Resampling.BILINEAR, 2: Image.Resampling.BICUBIC,
          3: Image.Resampling.BOX, 4: Image.Resampling.LANCZOS}


def coefficients(in_size, out_size, method, box=None):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, (first source index, weights);
    `box` = (in0, in1), the source span resized (default: all of it)."""
    function, support = FILTERS[method]
    in0, in1 = box or (0.0, in_size)
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    rows = []
    for out in range(out_size):
        centre = in0 + (out + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        weights = [function((x - centre + 0.5) / filterscale) for x in range(low, high)]
        total = sum(weights)
        weights = [w / total if total else w for w in weights]
        rows.append((low, [int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5)) for w in weights]))
    return rows


def reference(image, height, width, method, box=None):
    """Pillow's two passes on an HxWx3 image (its `box` (y0, x0, y1, x1) part), horizontal first, each
    rounded to uint8."""
    y0, x0, y1, x1 = box or (0, 0, *image.shape[:2])
    def one_axis(pixels, rows):
        out = np.empty((len(rows),) + pixels.shape[1:], np.uint8)
        for index, (low, weights) in enumerate(rows):
            total = sum(pixels[low + i].astype(np.int64) * w for i, w in enumerate(weights)) + (1 << (PRECISION_BITS - 1))
            out[index] = np.clip(total >> PRECISION_BITS, 0, 255)
        return out
    if (x0, x1) != (0, width) or width != image.shape[1]:
        image = one_axis(image.transpose(1, 0, 2), coefficients(image.shape[1], width, method, (x0, x1))
                         ).transpose(1, 0, 2)
    if (y0, y1) != (0, height) or height != image.shape[0]:
        image = one_axis(image, coefficients(image.shape[0], height, method, (y0, y1)))
    return image


@pytest.fixture(autouse=True, params=[True, False], ids=["simd", "plain"])
def passes(request):
    """Every test on both the AVX2 passes (where the CPU has AVX2) and the plain C ones."""
    default = _resample.simd()
    if request.param and not default:
        pytest.skip("this CPU has no AVX2: the plain passes are the ones that run")
    _resample.simd(request.param)
    yield
    _resample.simd(default)


def resample(image, crop, size, origin, out_shape, method, *box):
    out = np.empty((*out_shape, 3), np.uint8)
    _resample.resample(image, out, crop, size, origin, method, *box)
    return out


@pytest.mark.parametrize("method", [1, 2, 3, 4])
def test_equals_the_reference_to_the_bit_for_crop_then_resize_and_resize_then_crop(method):
    rng = np.random.default_rng(method)
    for _ in range(12):
        height, width = (int(v) for v in rng.integers(2, 50, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        crop_height, crop_width = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - crop_height + 1)), int(rng.integers(0, width - crop_width + 1))
        new_height, new_width = (int(v) for v in rng.integers(1, 60, 2))
        expected = reference(image[top:top + crop_height, left:left + crop_width], new_height, new_width, method)
        whole = resample(image, (top, left, crop_height, crop_width), (new_height, new_width), (0, 0),
                         (new_height, new_width), method)
        assert np.array_equal(whole, expected)
        # Only a window of the resized image: the same pixels as cropping the whole one.
        window_height, window_width = int(rng.integers(1, new_height + 1)), int(rng.integers(1, new_width + 1))
        at_y, at_x = int(rng.integers(0, new_height - window_height + 1)), int(rng.integers(0, new_width - window_width + 1))
        window = resample(image, (top, left, crop_height, crop_width), (new_height, new_width), (at_y, at_x),
                          (window_height, window_width), method)
        assert np.array_equal(window, expected[at_y:at_y + window_height, at_x:at_x + window_width])


@pytest.mark.parametrize("method", [0, 1, 2, 3, 4])
def test_equals_pillow_when_one_axis_changes(method):
    """Where Pillow has only one pass to do, its order cannot differ: equal to the bit."""
    rng = np.random.default_rng(10 + method)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in ((37, 20), (37, 90), (15, 53), (80, 53)):
        expected = np.asarray(Image.fromarray(image).resize(size[::-1], PILLOW[method]))
        assert np.array_equal(resample(image, (0, 0, 37, 53), size, (0, 0), size, method), expected)


def test_bilinear_within_one_level_of_pillow_whatever_its_pass_order():
    """Pillow 13 runs the vertical pass first for some sizes (it picks the cheaper order); the two
    orders round the intermediate row differently, which moves a pixel by at most 1 for filters
    with no negative lobes (bilinear, area). flow always goes horizontal first."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        image = rng.integers(0, 256, (int(rng.integers(8, 60)), int(rng.integers(8, 60)), 3), dtype=np.uint8)
        size = tuple(int(v) for v in rng.integers(4, 70, 2))
        for method in (1, 3):
            expected = np.asarray(Image.fromarray(image).resize(size[::-1], PILLOW[method])).astype(int)
            ours = resample(image, (0, 0, *image.shape[:2]), size, (0, 0), size, method)
            assert np.abs(ours - expected).max() <= 1


@pytest.mark.parametrize("method", [1, 2, 3, 4])
def test_a_fractional_box_of_the_crop_equals_the_reference_to_the_bit(method):
    """The box is where a window drawn on a full-size image lands on its 1/2- or 1/4-scale decode:
    resized from there, the filter reading only the crop's pixels."""
    rng = np.random.default_rng(20 + method)
    for _ in range(12):
        image = rng.integers(0, 256, (int(rng.integers(4, 50)), int(rng.integers(4, 50)), 3), dtype=np.uint8)
        top, left = int(rng.integers(0, image.shape[0] // 2)), int(rng.integers(0, image.shape[1] // 2))
        crop = (top, left, image.shape[0] - top, image.shape[1] - left)
        y0, y1 = sorted(rng.uniform(0, crop[2], 2))
        x0, x1 = sorted(rng.uniform(0, crop[3], 2))
        size = tuple(int(v) for v in rng.integers(1, 40, 2))
        expected = reference(image[top:, left:], *size, method, (y0, x0, y1, x1))
        assert np.array_equal(resample(image, crop, size, (0, 0), size, method, (y0, x0, y1, x1)), expected)


@pytest.mark.parametrize("method", [0, 1, 2, 3, 4])
def test_a_box_equals_pillows_resize_box_when_one_axis_changes(method):
    rng = np.random.default_rng(30 + method)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size, box in (((37, 20), (0, 2.5, 37, 41.25)), ((12, 53), (3.5, 0, 30.75, 53))):
        expected = np.asarray(Image.fromarray(image).resize(size[::-1], PILLOW[method], box=(box[1], box[0],
                                                                                          box[3], box[2])))
        assert np.array_equal(resample(image, (0, 0, 37, 53), size, (0, 0), size, method, box), expected)


def test_refuses_windows_outside_and_unknown_methods():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="not inside the 10x10 image"):
        resample(image, (5, 0, 6, 10), (4, 4), (0, 0), (4, 4), 1)
    with pytest.raises(ValueError, match="not inside the resized 4x4 image"):
        resample(image, (0, 0, 10, 10), (4, 4), (1, 0), (4, 4), 1)
    with pytest.raises(ValueError, match="method"):
        resample(image, (0, 0, 10, 10), (4, 4), (0, 0), (4, 4), 7)
    with pytest.raises(ValueError, match="not inside the 5x10 crop"):
        resample(image, (0, 0, 5, 10), (4, 4), (0, 0), (4, 4), 1, (0.5, 0, 5.5, 10))


def guarded(height, width, rng):
    """An HxWx3 image whose last byte is the last one before an inaccessible page: reading past it
    kills the process (the AVX2 pass reads a few bytes beyond the pixels it weighs)."""
    page = mmap.PAGESIZE
    size = height * width * 3
    pages = -(-size // page) + 1
    region = mmap.mmap(-1, pages * page)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mprotect(start + (pages - 1) * page, page, 0) == 0, ctypes.get_errno()  # PROT_NONE
    image = np.frombuffer(region, np.uint8, size, (pages - 1) * page - size).reshape(height, width, 3)
    image[...] = rng.integers(0, 256, image.shape, dtype=np.uint8)
    return image, region


@pytest.mark.parametrize("method", [1, 2, 4])
def test_reads_nothing_past_the_end_of_the_image(method):
    rng = np.random.default_rng(method)
    for height, width, size in ((7, 5, (9, 3)), (40, 33, (21, 30)), (64, 64, (100, 37))):
        image, region = guarded(height, width, rng)
        expected = reference(image.copy(), *size, method)
        assert np.array_equal(resample(image, (0, 0, height, width), size, (0, 0), size, method), expected)
        del image
        region.close()
