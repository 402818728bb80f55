"""Decoding only a crop window of a JPEG (flow/_jpeg_window.c through flow.image.decode_window): the very
pixels a whole decode has there, for every layout libjpeg writes, and the loader's crops unchanged."""

import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flow import _jpeg_window, augment, image
from flow.augment import AugmentSettings
from flow.errors import ImageError
from flow.image import decode, decode_window
from tests.test_dct_scaling import RRC, photo


def pillow_jpeg(data: bytes, mode: str = "RGB", **options) -> bytes:
    """`data` (a JPEG) re-encoded by Pillow in another layout: subsampling, progressive, grey, CMYK."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert(mode).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


LAYOUTS = {
    "4:2:0": lambda data: data,
    "4:2:2": lambda data: pillow_jpeg(data, subsampling="4:2:2"),
    "4:4:4": lambda data: pillow_jpeg(data, subsampling="4:4:4"),
    "progressive": lambda data: pillow_jpeg(data, progressive=True),
    "grey": lambda data: pillow_jpeg(data, "L"),
    "restart markers": lambda data: pillow_jpeg(data, restart_marker_blocks=4),
}


def test_pillows_libjpeg_turbo_is_open():
    assert image.WINDOW_DECODING  # Pillow's wheels bundle libjpeg-turbo: the loader decodes windows


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shrink", [1, 2, 4])
def test_a_window_has_the_pixels_of_the_whole_decode_there(layout, shrink):
    """Bit for bit, edges included: libjpeg's fancy upsampler treats the first and last column it
    decodes as the image's edge, so the window is widened by a pixel before libjpeg aligns it."""
    data = LAYOUTS[layout](photo(203, 301, 5))
    whole = decode(data, shrink=shrink) if shrink > 1 else decode(data)
    height, width = whole.shape[:2]
    rng = np.random.default_rng(shrink)
    windows = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, 1, 1), (1, 1, height - 2, width - 2)]
    for _ in range(40):
        window_height, window_width = rng.integers(1, height + 1), rng.integers(1, width + 1)
        windows.append((int(rng.integers(0, height - window_height + 1)), int(rng.integers(0, width - window_width + 1)),
                        int(window_height), int(window_width)))
    for top, left, window_height, window_width in windows:
        window = decode_window(data, shrink, (top, left, window_height, window_width))
        assert np.array_equal(window, whole[top:top + window_height, left:left + window_width]), (top, left)


def test_a_window_outside_the_image_or_corrupt_data_is_an_image_error():
    data = photo(64, 80)
    with pytest.raises(ImageError, match=r"window 10x10 at \(60, 0\) is outside the 64x80 image"):
        decode_window(data, 1, (60, 0, 10, 10))
    with pytest.raises(ImageError, match=r"cannot decode image \(1000 bytes\): .*Premature end of JPEG file"):
        decode_window(data[:1000], 1, (50, 0, 14, 80))  # the rows past the end of the data
    with pytest.raises(ImageError, match="cannot decode image .*Not a JPEG file"):
        decode_window(bytes(100), 1, (0, 0, 4, 4))
    with pytest.raises(ValueError, match="shrink: expected 1, 2, 4 or 8"):
        _jpeg_window.decode(data, 3, 0, 0, np.empty((4, 4, 3), np.uint8))


CROP_SIZE = AugmentSettings(min_crop_size=40, max_crop_size=120, rand_crop=True, rand_mirror=True)


@pytest.mark.parametrize("settings", [RRC, dataclasses.replace(RRC, inter_method=augment.BICUBIC),
                                      dataclasses.replace(RRC, dct_scaling=False), CROP_SIZE])
@pytest.mark.parametrize("layout", ["4:2:0", "progressive", "grey"])
def test_the_loaders_crops_are_the_same_decoded_as_windows_or_whole(monkeypatch, settings, layout):
    data = [LAYOUTS[layout](photo(480, 640, seed)) for seed in range(2)] + [LAYOUTS[layout](photo(203, 301, 2))]
    params = augment.draw(settings, np.random.default_rng(1), 24)
    placed = {}
    for windows in (True, False):
        monkeypatch.setattr(augment, "WINDOW_DECODING", windows)
        out = np.empty((24, 100, 100, 3), np.uint8)
        for index in range(24):
            augment.place_encoded(data[index % 3], params, index, settings, out[index], 1 << 30)
        placed[windows] = out
    assert np.array_equal(placed[True], placed[False])


def test_a_jpeg_libjpeg_cannot_decode_to_rgb_goes_the_whole_decoders_way(monkeypatch):
    """CMYK: libjpeg converts it to RGB only in TurboJPEG's layer, which simplejpeg uses."""
    data = pillow_jpeg(photo(96, 128), "CMYK")
    with pytest.raises(ImageError, match="[Uu]nsupported color conversion"):
        decode_window(data, 1, (0, 0, 8, 8))
    params = augment.draw(RRC, np.random.default_rng(0), 1)
    out = np.empty((2, 64, 64, 3), np.uint8)
    for index, windows in enumerate((True, False)):
        monkeypatch.setattr(augment, "WINDOW_DECODING", windows)
        augment.place_encoded(data, params, 0, RRC, out[index], 1 << 30)
    assert np.array_equal(out[0], out[1])


def test_a_library_that_is_not_libjpeg_turbo_is_refused_at_load():
    """In a fresh process (flow.image opens the real one at import): a missing file, a library without
    libjpeg's calls, and a decode before any load are each a clear error."""
    script = """
from flow import _jpeg_window
for call in (lambda: _jpeg_window.decode(b"", 1, 0, 0, bytearray(3)),
             lambda: _jpeg_window.load("/nonexistent/libjpeg.so"), lambda: _jpeg_window.load("libc.so.6")):
    try:
        call()
    except (OSError, RuntimeError) as error:
        print(type(error).__name__, error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines() == [
        "RuntimeError flow._jpeg_window.load(path) first",
        "OSError cannot open libjpeg /nonexistent/libjpeg.so: /nonexistent/libjpeg.so: cannot open shared object "
        "file: No such file or directory",
        "OSError libjpeg libc.so.6 lacks jpeg_std_error (libjpeg-turbo 1.5 or later has it)",
    ]
