"""Image codecs: decompression bombs are refused from the header, before any pixel is decoded."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from flow.errors import ImageError
from flow.image import decode, decode_size, encode


def claiming(data: bytes, width: int, height: int) -> bytes:
    """A small encoded image whose header claims `width` x `height` (its pixels stay a few bytes)."""
    if data[:2] == b"\xff\xd8":  # JPEG: height and width follow the precision byte of the SOF0 segment
        sof = data.index(b"\xff\xc0")
        return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]
    # PNG: width and height open the IHDR chunk, which its CRC covers
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


IMAGE = np.full((16, 16, 3), 90, np.uint8)


OVER_THE_LIMIT = r"image of {}x{} pixels .* over the limit of 67108864 pixels \(data.max_image_pixels\): not decoded"
OVER_PILLOWS_LIMIT = r"cannot decode image .* exceeds limit of 178956970 pixels"  # Pillow's own, for non-JPEG formats


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # flow filters it; pytest resets filters
@pytest.mark.parametrize("encoding, width, height, refusal", [
    (".jpg", 30000, 30000, OVER_THE_LIMIT), (".jpg", 65500, 65500, OVER_THE_LIMIT),
    (".png", 13000, 13000, OVER_THE_LIMIT), (".png", 20000, 20000, OVER_PILLOWS_LIMIT)])
def test_an_image_claiming_more_pixels_than_the_limit_is_refused_before_decoding(encoding, width, height, refusal):
    bomb = claiming(encode(IMAGE, encoding), width, height)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=refusal.format(width, height)):
            decode(bomb)
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    if refusal is OVER_THE_LIMIT:
        assert decode_size(bomb) == (height, width)  # `flow inspect` reports it


def test_the_limit_is_the_callers_and_images_within_it_decode():
    for encoding in (".jpg", ".png"):
        data = encode(IMAGE, encoding)
        assert decode(data, max_pixels=256).shape == (16, 16, 3)
        with pytest.raises(ImageError, match="image of 16x16 pixels .* over the limit of 255 pixels"):
            decode(data, max_pixels=255)


def test_an_image_of_another_size_than_out_is_decoded_into_a_new_array_never_into_out(monkeypatch):
    # simplejpeg 1.9 leaks ~4 KB each time it refuses a buffer of the wrong size: the loader, which
    # offers each image its output slot, must never have it refuse one.
    import simplejpeg

    calls = []
    real_decode = simplejpeg.decode_jpeg

    def spy(data, *args, buffer=None, **kwargs):
        calls.append(None if buffer is None else buffer.shape)
        return real_decode(data, *args, buffer=buffer, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = encode(pixels, ".jpg")
    small = np.zeros((8, 8, 3), np.uint8)
    decoded = decode(data, out=small)
    assert decoded is not small and decoded.shape == (24, 32, 3) and not small.any()
    fitting = np.zeros((24, 32, 3), np.uint8)
    assert decode(data, out=fitting) is fitting
    assert calls == [None, (24, 32, 3)]


def test_an_image_likely_to_fit_goes_straight_in_and_one_that_does_not_still_comes_out_whole(monkeypatch):
    import simplejpeg

    headers = []
    real_header = simplejpeg.decode_jpeg_header
    monkeypatch.setattr(simplejpeg, "decode_jpeg_header", lambda data: headers.append(1) or real_header(data))
    pixels = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = encode(pixels, ".jpg")
    fitting = np.zeros((24, 32, 3), np.uint8)
    assert decode(data, out=fitting, likely_fits=True) is fitting and headers == []  # no header read
    small = np.zeros((8, 8, 3), np.uint8)
    decoded = decode(data, out=small, likely_fits=True)
    assert decoded is not small and decoded.shape == (24, 32, 3) and headers == [1]
    assert np.array_equal(decoded, fitting)
    with pytest.raises(ImageError, match="cannot decode"):
        decode(b"\xff\xd8" + b"\x00" * 64, out=fitting, likely_fits=True)
