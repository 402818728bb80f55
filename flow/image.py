"""Image codecs: JPEG through libjpeg-turbo (simplejpeg, releases the GIL), everything else through Pillow.

A crop window of a JPEG alone (`decode_window`) goes through libjpeg-turbo's libjpeg API, which
simplejpeg does not expose: flow/_jpeg_window.c, on the libjpeg-turbo Pillow's wheels bundle.

Images are RGB, HxWx3 uint8, everywhere in flow (MXNet's ImageRecordIter is RGB too).
"""

from __future__ import annotations

import ctypes.util
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL
import simplejpeg
from PIL import Image

from flow.errors import ImageError

try:
    from flow import _jpeg_window
except ImportError as error:  # a source tree that pip never built
    raise ImportError("flow's C extension flow._jpeg_window is not built: run `pip install -e .` in the repository "
                      "(it needs a C compiler)") from error

_JPEG_START = b"\xff\xd8"


def is_jpeg(data: bytes) -> bool:
    return data[:2] == _JPEG_START


# The most pixels an image may have to be decoded (data.max_image_pixels): a corrupt or hostile
# header claiming 65500x65500 would otherwise have the decoder allocate 12 GiB before it fails.
DEFAULT_MAX_PIXELS = 8192 * 8192


# libjpeg-turbo's DCT-domain scalings with SIMD inverse DCTs; 5/8-7/8 were measured slower than a
# full decode, and 1/8 keeps only each block's mean.
DCT_SHRINKS = (1, 2, 4)
MIN_SHRUNK_SIDE = 8


def decode(data: bytes, out: np.ndarray | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           likely_fits: bool = False, shrink: int = 1) -> np.ndarray:
    """RGB uint8 HxWx3 from JPEG/PNG/any Pillow format: decoded straight into `out` when the image
    has `out`'s shape (and `out` is returned), else into a new array. An image whose header claims
    more than `max_pixels` pixels is an ImageError, before any decoding.

    `likely_fits`: a JPEG goes into `out` without its header read first (~14% of a 64x64 decode);
    simplejpeg checks the size against `out` before it allocates, and only a refusal costs the
    header read (and the leak below). For callers whose images mostly have `out`'s shape.

    `shrink` 2 or 4 (JPEG only, `out` not used): decoded at 1/shrink of its size, ceil(H / shrink) x
    ceil(W / shrink), by libjpeg-turbo's DCT scaling (a 500x375 photo: ~0.7x, ~0.55x the time of a
    full decode): its pixel i approximates the mean of full-size pixels shrink*i .. shrink*i+shrink-1."""
    if shrink != 1:
        return _decode_shrunk(data, shrink, max_pixels)
    try:
        if is_jpeg(data):
            if likely_fits and out is not None:
                try:
                    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
                    return out
                except ValueError:
                    pass  # another size, or corrupt: the header read says which
            # The header first: simplejpeg 1.9 leaks ~4 KB each time it refuses a buffer of another
            # size, which the loader would pay for every image larger than its output.
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            check_pixels(height, width, max_pixels, data)
            if out is not None and out.shape == (height, width, 3):
                simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)  # returns a view of `out`
                return out
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(image.height, image.width, max_pixels, data)
            rgb = np.asarray(image.convert("RGB"))
    except (ValueError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {error}") from None
    if out is not None and out.shape == rgb.shape:
        out[...] = rgb
        return out
    return rgb


def _decode_shrunk(data: bytes, shrink: int, max_pixels: int) -> np.ndarray:
    if shrink not in DCT_SHRINKS or not is_jpeg(data):
        raise ValueError(f"shrink {shrink}: only JPEGs, by one of {DCT_SHRINKS}")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        check_pixels(height, width, max_pixels, data)
        if min(height, width) < MIN_SHRUNK_SIDE:
            raise ValueError(f"a {width}x{height} image is too small to decode at 1/{shrink}")
        shape = (-(-height // shrink), -(-width // shrink))
        # simplejpeg picks the smallest libjpeg-turbo scale that keeps at least these sizes: 1/shrink
        # (a smaller one, 3/8 or 1/8, could give the same size only for a side under 8 px).
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=shape[0], min_width=shape[1],
                                       min_factor=shrink)
    except ValueError as error:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {error}") from None
    if image.shape[:2] != shape:
        raise ImageError(f"a {width}x{height} JPEG decoded at 1/{shrink} is {image.shape[1]}x{image.shape[0]}, "
                         f"not {shape[1]}x{shape[0]}")
    return image


def check_pixels(height: int, width: int, max_pixels: int, data: bytes) -> None:
    if height * width > max_pixels:
        raise ImageError(f"image of {width}x{height} pixels ({len(data)} bytes) is over the limit of {max_pixels} "
                         f"pixels (data.max_image_pixels): not decoded")


def _libjpeg_paths() -> Iterator[str]:
    """The libjpeg-turbo that Pillow's wheels bundle (Linux, then macOS names), then the system's, which a
    Pillow built from source uses (looked for only when needed: find_library runs ldconfig)."""
    pillow = Path(PIL.__file__).parent
    yield from (str(path) for path in sorted((pillow.parent / "pillow.libs").glob("libjpeg*.so*")))
    yield from (str(path) for path in sorted((pillow / ".dylibs").glob("libjpeg*.dylib")))
    if system := ctypes.util.find_library("jpeg"):
        yield system


def _open_libjpeg() -> bool:
    """Opens the first libjpeg-turbo that decodes windows (flow/_jpeg_window.c); False when none does (then
    whole images are decoded and cropped)."""
    for path in _libjpeg_paths():
        try:
            _jpeg_window.load(path)
            return True
        except OSError:  # too old, or built for another ABI than flow/libjpeg's jpeg62 headers
            continue
    return False


WINDOW_DECODING = _open_libjpeg()


def decode_window(data: bytes, shrink: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """The (top, left, height, width) `window` of a JPEG decoded at 1/`shrink` (as `decode`'s), with
    the very pixels a whole decode has there, decoding only what it needs: libjpeg-turbo crops the
    columns and skips the rows around it (flow/_jpeg_window.c; needs WINDOW_DECODING). An ImageError for
    data libjpeg cannot decode to RGB."""
    top, left, height, width = window
    out = np.empty((height, width, 3), dtype=np.uint8)
    try:
        _jpeg_window.decode(data, shrink, top, left, out)
    except ValueError as error:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {error}") from None
    return out


def decode_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header without decoding the pixels."""
    try:
        if is_jpeg(data):
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height, width
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except (ValueError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read image header ({len(data)} bytes): {error}") from None


def encode(image: np.ndarray, encoding: str = ".jpg", quality: int = 95) -> bytes:
    """JPEG (quality 1-100) or PNG (quality = zlib compression level 0-9, as im2rec) bytes of an RGB image."""
    image = np.ascontiguousarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    encoding = encoding.lower()
    if encoding in (".jpg", ".jpeg"):
        colorspace = "GRAY" if image.shape[2] == 1 else "RGB"
        return simplejpeg.encode_jpeg(image, quality=quality, colorspace=colorspace, colorsubsampling="420")
    if encoding == ".png":
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
            buffer, format="PNG", compress_level=min(max(quality, 0), 9)
        )
        return buffer.getvalue()
    raise ImageError(f"unknown encoding {encoding!r}: expected '.jpg' or '.png'")


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Scales so that the shorter side is `size` (im2rec --resize), keeping the aspect ratio."""
    height, width = image.shape[:2]
    if height > width:
        new_width, new_height = size, int(height * size / width)
    else:
        new_width, new_height = int(width * size / height), size
    return np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR))


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square (im2rec --center-crop)."""
    height, width = image.shape[:2]
    if height > width:
        margin = (height - width) // 2
        return image[margin : margin + width]
    margin = (width - height) // 2
    return image[:, margin : margin + height]
