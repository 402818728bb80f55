"""Image augmentation as MXNet's ImageRecordIter does it (image_aug_default.cc + the normalize step).

Per image, in MXNet's order: resize the shorter side, a random affine warp (rotation, shear,
scale, aspect ratio), pad, crop to the output size (random or centred), then on the cropped
batch slice: HSL jitter, mirror, and the mean/std normalization to float32 NCHW.

Randomness is drawn up front for a whole batch (`draw`) from a numpy Generator, so the result
depends only on the generator's seed, never on how a batch is split between threads. The
geometric steps work per image (their input sizes differ); colour works on a whole slice with
numpy ufuncs, mirror and normalization with C loops (flow/_pixels.c), all without the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from flow.errors import ImageError

try:
    from flow import _pixels
except ImportError as error:  # a source tree that pip never built
    raise ImportError("flow's C extension flow._pixels is not built: run `pip install -e .` in the "
                      "repository (it needs a C compiler)") from error


@dataclass(frozen=True)
class AugmentSettings:
    """ImageRecordIter's augmentation knobs (data.py names in brackets where they differ)."""

    resize: int = 0  # shorter side to this many pixels first; 0: keep the size
    rand_crop: bool = False  # [random_crop] otherwise a centred crop
    rand_mirror: bool = False  # [random_mirror]
    max_random_h: int = 0  # hue, OpenCV units (0-180)
    max_random_s: int = 0
    max_random_l: int = 0
    max_aspect_ratio: float = 0.0  # [max_random_aspect_ratio]
    max_rotate_angle: int = 0  # [max_random_rotate_angle], degrees
    max_shear_ratio: float = 0.0  # [max_random_shear_ratio]
    min_random_scale: float = 1.0
    max_random_scale: float = 1.0
    pad: int = 0  # [pad_size] border added before cropping
    fill_value: int = 127  # colour of pad borders and of the corners a warp uncovers

    @property
    def affine(self) -> bool:
        return bool(self.max_rotate_angle or self.max_shear_ratio or self.max_aspect_ratio
                    or self.min_random_scale != 1.0 or self.max_random_scale != 1.0)

    @property
    def reshapes(self) -> bool:
        """Whether an image goes through more than a crop on its way to the output size."""
        return bool(self.resize or self.pad or self.affine)

    @property
    def colour(self) -> bool:
        return bool(self.max_random_h or self.max_random_s or self.max_random_l)

    @property
    def random(self) -> bool:
        return self.rand_crop or self.rand_mirror or self.colour or self.affine


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for a run of images; `params[i:j]` is the part for a slice."""

    crop_y: np.ndarray  # uniform [0, 1): where the crop window sits in the free range
    crop_x: np.ndarray
    mirror: np.ndarray  # bool
    shear: np.ndarray
    angle: np.ndarray  # integer degrees
    scale: np.ndarray
    ratio: np.ndarray  # aspect ratio multiplier (width / height)
    hls: np.ndarray  # (n, 3) integer deltas in OpenCV's H, L, S order

    def __len__(self) -> int:
        return len(self.mirror)

    def __getitem__(self, part: slice) -> AugmentParams:
        return AugmentParams(*(getattr(self, name)[part] for name in self.__dataclass_fields__))


def draw(settings: AugmentSettings, rng: np.random.Generator, count: int) -> AugmentParams:
    """Draws everything `count` images need; always the same draws, so a seed fixes the result."""
    uniform = rng.random((7, count))
    return AugmentParams(
        crop_y=uniform[0],
        crop_x=uniform[1],
        mirror=(uniform[2] < 0.5) & settings.rand_mirror,
        shear=uniform[3] * settings.max_shear_ratio * 2 - settings.max_shear_ratio,
        angle=np.floor(uniform[4] * (2 * settings.max_rotate_angle + 1)).astype(np.int64) - settings.max_rotate_angle,
        scale=uniform[5] * (settings.max_random_scale - settings.min_random_scale) + settings.min_random_scale,
        ratio=uniform[6] * settings.max_aspect_ratio * 2 - settings.max_aspect_ratio + 1,
        # MXNet truncates the uniform delta towards zero (a C int conversion).
        hls=np.trunc(rng.random((count, 3)) * 2 * _hls_limits(settings) - _hls_limits(settings)).astype(np.int64),
    )


def _hls_limits(settings: AugmentSettings) -> np.ndarray:
    return np.array([settings.max_random_h, settings.max_random_l, settings.max_random_s], dtype=np.float64)


# --------------------------------------------------------------------------- per image: geometry


def place(image: np.ndarray, params: AugmentParams | None, index: int, settings: AugmentSettings,
          out: np.ndarray) -> None:
    """Resize, warp, pad and crop one RGB image (HxWx3 uint8) into `out` (the output size).

    `params` may be None when the settings draw nothing (`settings.random` is false).
    """
    if settings.resize:
        image = resize_shorter(image, settings.resize)
    if settings.affine:
        image = warp(image, float(params.shear[index]), int(params.angle[index]), float(params.scale[index]),
                     float(params.ratio[index]), settings.fill_value)
    if settings.pad:
        image = pad(image, settings.pad, settings.fill_value)
    if settings.rand_crop:
        crop_into(image, float(params.crop_y[index]), float(params.crop_x[index]), True, out)
    else:
        crop_into(image, 0.0, 0.0, False, out)


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Scales so the shorter side is `size`, the longer one in proportion (rounded down, as MXNet)."""
    height, width = image.shape[:2]
    if height > width:
        new_height, new_width = size * height // width, size
    else:
        new_height, new_width = size, size * width // height
    if (new_height, new_width) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR))


def warp_matrix(shear: float, angle: int, scale: float, ratio: float, height: int,
                width: int) -> tuple[np.ndarray, int, int]:
    """MXNet's affine map (source pixel -> output pixel, 2x3) and the output's height and width."""
    cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    height_scale = 2 * scale / (1 + ratio)
    width_scale = ratio * height_scale
    new_width, new_height = int(scale * width), int(scale * height)
    matrix = np.array([
        [height_scale * cos - shear * sin * width_scale, height_scale * sin + shear * cos * width_scale, 0.0],
        [-sin * width_scale, cos * width_scale, 0.0],
    ])
    # Centre the warped image in the output.
    matrix[:, 2] = (np.array([new_width, new_height]) - matrix[:, :2] @ np.array([width, height])) / 2
    return matrix, new_height, new_width


def warp(image: np.ndarray, shear: float, angle: int, scale: float, ratio: float, fill_value: int) -> np.ndarray:
    """The affine warp of ImageRecordIter (bilinear, uncovered corners in `fill_value`)."""
    height, width = image.shape[:2]
    matrix, new_height, new_width = warp_matrix(shear, angle, scale, ratio, height, width)
    if new_height < 1 or new_width < 1:
        raise ImageError(f"random scale {scale:.3f} shrinks a {height}x{width} image to nothing")
    inverse = np.linalg.inv(matrix[:, :2])
    shift = -inverse @ matrix[:, 2]
    # Pillow samples the source at inverse @ (x + 0.5, y + 0.5) + c with pixel centres at +0.5;
    # this c makes that the pixel-index mapping OpenCV's warpAffine uses.
    shift = shift + 0.5 - inverse @ np.array([0.5, 0.5])
    coefficients = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    warped = Image.fromarray(image).transform((new_width, new_height), Image.Transform.AFFINE, coefficients,
                                               resample=Image.Resampling.BILINEAR, fillcolor=(fill_value,) * 3)
    return np.asarray(warped)


def pad(image: np.ndarray, size: int, fill_value: int) -> np.ndarray:
    """`size` pixels of `fill_value` on every side."""
    height, width = image.shape[:2]
    padded = np.full((height + 2 * size, width + 2 * size, 3), fill_value, dtype=np.uint8)
    padded[size:size + height, size:size + width] = image
    return padded


def crop_into(image: np.ndarray, where_y: float, where_x: float, random: bool, out: np.ndarray) -> None:
    """Copies the out-sized window of `image` into `out`: at `where_*` (0-1) of the free range, or centred."""
    height, width = image.shape[:2]
    out_height, out_width = out.shape[:2]
    if height < out_height or width < out_width:
        raise ImageError(f"image is {height}x{width} after resize/pad, smaller than the output "
                         f"{out_height}x{out_width}: set data.resize or data.pad_size")
    if random:
        top = int(where_y * (height - out_height + 1))
        left = int(where_x * (width - out_width + 1))
    else:
        top, left = (height - out_height) // 2, (width - out_width) // 2
    out[...] = image[top:top + out_height, left:left + out_width]


# --------------------------------------------------------------------------- per slice: colour, mirror, normalize


def finish(images: np.ndarray, params: AugmentParams | None, settings: AugmentSettings,
           out: np.ndarray | None = None, mean: np.ndarray | None = None, inv_std: np.ndarray | None = None) -> None:
    """HSL jitter and mirror on a slice of output-sized images (n, H, W, 3) uint8, in place; with
    `out`, the normalization to float32 NCHW `out` too, the mirror done on the way (`params`
    None when the settings draw nothing)."""
    if settings.colour:
        jitter_hls(images, params.hls)
    flags = params.mirror if settings.rand_mirror else None
    if out is not None:
        normalize(images, out, mean, inv_std, flags)
    elif flags is not None:
        mirror(images, flags)


def mirror(images: np.ndarray, flags: np.ndarray) -> None:
    """Flips the flagged images of a slice left to right, in place (a C loop without the GIL)."""
    _pixels.mirror(images, np.ascontiguousarray(flags, dtype=np.bool_))


def jitter_hls(images: np.ndarray, deltas: np.ndarray) -> None:
    """Adds per-image (H, L, S) deltas in OpenCV's 8-bit HLS units (H 0-180, L and S 0-255), clipped, in place.

    Per pixel, in float32: RGB / 255 to hue in degrees, lightness and saturation (OpenCV's
    formulas; grey pixels have hue and saturation 0), hue = clip(hue / 2 + dH, 0, 180) * 2,
    lightness and saturation = clip(x * 255 + d, 0, 255) / 255, back to RGB, rint(x * 255).
    A C loop (flow/_pixels.c); the numpy version of the same steps (tests/test_pixels.py keeps it
    as the reference, equal to the bit) took 1.6 ms a 64x64 image.
    """
    _pixels.jitter_hls(images, np.ascontiguousarray(deltas, dtype=np.float32))


def normalize(images: np.ndarray, out: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
              mirror_flags: np.ndarray | None = None) -> None:
    """(images - mean) * inv_std, NHWC uint8 -> NCHW float32 `out`, for a whole slice at once,
    flipping the images flagged in `mirror_flags` left to right.

    A C loop (flow/_pixels.c) that reads each pixel once, without the GIL: numpy's transposing
    cast and plane passes took three times as long, a third of the loader's time.
    """
    flags = None if mirror_flags is None else np.ascontiguousarray(mirror_flags, dtype=np.bool_)
    _pixels.normalize(images, out, tuple(mean.tolist()), tuple(inv_std.tolist()), flags)
