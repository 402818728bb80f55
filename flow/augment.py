"""Image augmentation as MXNet's ImageRecordIter does it (image_aug_default.cc + the normalize step).

Per image, in MXNet's order (1.9's image_aug_default.cc): resize the shorter side, a random affine
warp (rotation, shear, scale, aspect ratio, clamped to min/max_img_size), pad, then one crop:
`random_resized_crop` (up to 10 tries of a random area and aspect, resized to the output size; if
none fits, MXNet's fallback, the centred crop below), a square crop of random size in
[min_crop_size, max_crop_size] resized to the output size, or a window of the output size (random or
centred). Then on the cropped batch slice: brightness, contrast and saturation in a random order,
HSL jitter, PCA lighting noise, mirror, and the mean/std normalization to float32 NCHW.

Resizing and cropping go through flow/_resample.c: Pillow's resampling arithmetic, computing only
the pixels the crop keeps (`inter_method` picks the filter, as MXNet's numbers do).

Decoding less (`dct_scaling`, on by default): when the first resize or the crop window shrinks a
JPEG by at least 2 or 4 on both axes, it is decoded at 1/2 or 1/4 of its size by libjpeg-turbo's
DCT scaling (`dct_shrink`, `place_encoded`). The window is still drawn on the full-size image, as
MXNet draws it, and mapped onto the smaller one exactly: full-size coordinates divided by the
shrink, fractions kept (no rounding), the filter then resampling from there. Not bit-identical to
decoding at full size and resizing (the DCT's reduced IDCT averages where the filter weighs); on
the bench's photos the difference is small (tests/test_dct_scaling.py states the bound).

Decoding only the window: when random_resized_crop's or the crop-size window is the first step to
read a JPEG's pixels (`first_window`), only the pixels it touches are decoded (`decode_window`,
libjpeg-turbo skipping the rows above it and the columns beside it, never decoding the rows below):
the same pixels as a whole decode, so the same output to the bit; on the bench's photos a window
decodes in ~0.55x the time of the whole image.

Randomness is drawn up front for a whole batch (`draw`) from a numpy Generator, so the result
depends only on the generator's seed, never on how a batch is split between threads. The
geometric steps work per image (their input sizes differ); colour works on a whole slice with
numpy ufuncs, mirror and normalization with C loops (flow/_pixels.c), all without the GIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flow.errors import ImageError
from flow.image import (DCT_SHRINKS, MIN_SHRUNK_SIDE, WINDOW_DECODING, check_pixels, decode, decode_size,
                        decode_window, is_jpeg)

try:
    from flow import _pixels, _resample
except ImportError as error:  # a source tree that pip never built
    raise ImportError("flow's C extensions flow._pixels and flow._resample are not built: run `pip install -e .` "
                      "in the repository (it needs a C compiler)") from error

# MXNet's inter_method numbers; 9 and 10 choose one of 0-4 per resize.
NEAREST, BILINEAR, BICUBIC, AREA, LANCZOS, AUTO, RANDOM = 0, 1, 2, 3, 4, 9, 10
INTER_METHODS = (NEAREST, BILINEAR, BICUBIC, AREA, LANCZOS, AUTO, RANDOM)
_WARP_FILTERS = {NEAREST: Image.Resampling.NEAREST, BICUBIC: Image.Resampling.BICUBIC}  # others: bilinear
RRC_TRIES = 10  # random_resized_crop's attempts before the centred-crop fallback

# MXNet's PCA lighting: eigenvalue x eigenvector of ImageNet's RGB covariance (rows R, G, B), float32.
PCA_EIGVEC = np.array([[55.46 * -0.5675, 4.794 * 0.7192, 1.148 * 0.4009],
                       [55.46 * -0.5808, 4.794 * -0.0045, 1.148 * -0.8140],
                       [55.46 * -0.5836, 4.794 * -0.6948, 1.148 * 0.4203]], dtype=np.float32)


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
    min_aspect_ratio: float = 0.0  # [min_random_aspect_ratio] 0: unset (data.py's None), aspect 1 +- max_aspect_ratio
    random_resized_crop: bool = False
    min_random_area: float = 1.0  # random_resized_crop's area, a fraction of the image's
    max_random_area: float = 1.0
    min_crop_size: int = 0  # a square crop of random side in [min, max], resized to the output; 0: off (MXNet's -1)
    max_crop_size: int = 0
    max_img_size: float = 0.0  # clamp the warped image's width and height; 0: no limit (MXNet's 1e10)
    min_img_size: float = 0.0
    brightness: float = 0.0  # colour jitter: factors 1 +- these, in a random order
    contrast: float = 0.0
    saturation: float = 0.0
    pca_noise: float = 0.0  # standard deviation of AlexNet-style PCA lighting noise
    inter_method: int = BILINEAR  # MXNet's numbers: 0 nearest, 1 bilinear, 2 cubic, 3 area, 4 lanczos, 9 auto, 10 random
    dct_scaling: bool = True  # decode a JPEG at 1/2 or 1/4 size when the geometry then shrinks it that much

    @property
    def aspect_range(self) -> tuple[float, float]:
        if self.min_aspect_ratio:
            return self.min_aspect_ratio, self.max_aspect_ratio
        return 1 - self.max_aspect_ratio, 1 + self.max_aspect_ratio

    @property
    def affine(self) -> bool:
        low, high = self.aspect_range
        return bool(self.max_rotate_angle or self.max_shear_ratio
                    or (not self.random_resized_crop and (low != 1.0 or high != 1.0))
                    or self.min_random_scale != 1.0 or self.max_random_scale != 1.0
                    or self.max_img_size or self.min_img_size)

    @property
    def rrc(self) -> bool:
        """random_resized_crop with something to draw (MXNet skips it when area and aspect are both 1)."""
        return self.random_resized_crop and (self.min_random_area != 1.0 or self.max_random_area != 1.0
                                             or self.aspect_range != (1.0, 1.0))

    @property
    def crop_size(self) -> bool:
        return not self.random_resized_crop and bool(self.min_crop_size or self.max_crop_size)

    @property
    def window_first(self) -> bool:
        """Whether a crop window (random_resized_crop's or the crop-size square) is the first step to
        read an image's pixels: no resize, warp or pad before it."""
        return (self.rrc or self.crop_size) and not (self.resize or self.affine or self.pad)

    @property
    def reshapes(self) -> bool:
        """Whether an image goes through more than a crop on its way to the output size."""
        return bool(self.resize or self.pad or self.affine or self.random_resized_crop or self.crop_size)

    @property
    def colour(self) -> bool:
        return bool(self.max_random_h or self.max_random_s or self.max_random_l)

    @property
    def jitter(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)

    @property
    def random(self) -> bool:
        return (self.rand_crop or self.rand_mirror or self.colour or self.affine or self.rrc or self.crop_size
                or self.jitter or bool(self.pca_noise) or self.inter_method == RANDOM)


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
    # Drawn only when their augmenter is on (otherwise neutral values), after the ones above, so
    # turning one on leaves the others' draws as they were.
    area: np.ndarray  # (n, RRC_TRIES) random_resized_crop's tries: area fraction,
    aspect: np.ndarray  # aspect ratio (width / height)
    swap: np.ndarray  # and MXNet's coin that swaps the window's height and width (bool)
    crop_size: np.ndarray  # side of the min/max_crop_size square
    alphas: np.ndarray  # (n, 3) float32 brightness, contrast, saturation factors
    order: np.ndarray  # (n, 3) the order they apply in (0 brightness, 1 contrast, 2 saturation)
    pca: np.ndarray  # (n, 3) float32 R, G, B lighting offsets
    methods: np.ndarray  # (n, 3) inter_method 10's picks for the resize, the warp and the crop

    def __len__(self) -> int:
        return len(self.mirror)

    def __getitem__(self, part: slice) -> AugmentParams:
        return AugmentParams(*(getattr(self, name)[part] for name in self.__dataclass_fields__))


def draw(settings: AugmentSettings, rng: np.random.Generator, count: int) -> AugmentParams:
    """Draws everything `count` images need; always the same draws, so a seed fixes the result."""
    uniform = rng.random((7, count))
    low, high = settings.aspect_range
    if settings.min_aspect_ratio:
        ratio = uniform[6] * (high - low) + low
    else:  # MXNet's formula for 1 +- max_aspect_ratio, kept so that existing draws stay bit for bit
        ratio = uniform[6] * settings.max_aspect_ratio * 2 - settings.max_aspect_ratio + 1
    # MXNet truncates the uniform HSL delta towards zero (a C int conversion).
    hls = np.trunc(rng.random((count, 3)) * 2 * _hls_limits(settings) - _hls_limits(settings)).astype(np.int64)
    area = np.ones((count, RRC_TRIES))
    aspect = np.ones((count, RRC_TRIES))
    swap = np.zeros((count, RRC_TRIES), dtype=bool)
    if settings.rrc:
        tries = rng.random((3, count, RRC_TRIES))
        area = tries[0] * (settings.max_random_area - settings.min_random_area) + settings.min_random_area
        aspect = tries[1] * (high - low) + low
        swap = tries[2] > 0.5
    crop_size = np.zeros(count, dtype=np.int64)
    if settings.crop_size:
        sizes = settings.max_crop_size - settings.min_crop_size + 1
        crop_size = settings.min_crop_size + np.floor(rng.random(count) * sizes).astype(np.int64)
    alphas, order = np.ones((count, 3), dtype=np.float32), np.tile(np.arange(3), (count, 1))
    if settings.jitter:
        limits = np.array([settings.brightness, settings.contrast, settings.saturation])
        alphas = (1 + (rng.random((count, 3)) * 2 - 1) * limits).astype(np.float32)
        order = rng.random((count, 3)).argsort(axis=1)
    pca = np.zeros((count, 3), dtype=np.float32)
    if settings.pca_noise:
        pca = (rng.normal(0, settings.pca_noise, (count, 3)).astype(np.float32) @ PCA_EIGVEC.T).astype(np.float32)
    methods = np.full((count, 3), settings.inter_method, dtype=np.int64)
    if settings.inter_method == RANDOM:
        methods = rng.integers(0, 5, (count, 3))
    return AugmentParams(
        crop_y=uniform[0],
        crop_x=uniform[1],
        mirror=(uniform[2] < 0.5) & settings.rand_mirror,
        shear=uniform[3] * settings.max_shear_ratio * 2 - settings.max_shear_ratio,
        angle=np.floor(uniform[4] * (2 * settings.max_rotate_angle + 1)).astype(np.int64) - settings.max_rotate_angle,
        scale=uniform[5] * (settings.max_random_scale - settings.min_random_scale) + settings.min_random_scale,
        ratio=ratio, hls=hls, area=area, aspect=aspect, swap=swap, crop_size=crop_size, alphas=alphas, order=order,
        pca=pca, methods=methods,
    )


def _hls_limits(settings: AugmentSettings) -> np.ndarray:
    return np.array([settings.max_random_h, settings.max_random_l, settings.max_random_s], dtype=np.float64)


# --------------------------------------------------------------------------- per image: geometry


def place_encoded(data: bytes, params: AugmentParams | None, index: int, settings: AugmentSettings,
                  out: np.ndarray, max_pixels: int) -> None:
    """Decodes one encoded image and places it into `out` (see `place`): a JPEG at the DCT scale
    `dct_shrink` allows, and only its crop window when that is the first step to read its pixels."""
    if not is_jpeg(data) or not (settings.dct_scaling or (WINDOW_DECODING and settings.window_first)):
        place(decode(data, max_pixels=max_pixels), params, index, settings, out)  # no header read first
        return
    size = decode_size(data)  # a header read (~5 us; a photo's decode takes ~1 ms)
    check_pixels(*size, max_pixels, data)
    window = first_window(*size, params, index, settings)
    shrink = dct_shrink(*size, params, index, settings, out.shape[:2], window)
    if window is not None and WINDOW_DECODING:
        crop, box = scaled_crop(window, shrink)
        try:
            pixels = decode_window(data, shrink, crop)
        except ImageError:
            pass  # one libjpeg does not decode to RGB (CMYK): the whole decoder decodes it or says why
        else:
            methods = params.methods[index]
            method = pick_method(methods[2], window[2:], out.shape[:2])
            _resample.resample(pixels, out, (0, 0, *crop[2:]), out.shape[:2], (0, 0), method, box)
            return
    image = decode(data, max_pixels=max_pixels, shrink=shrink)
    place(image, params, index, settings, out, size if shrink != 1 else None, shrink)


def first_window(height: int, width: int, params: AugmentParams | None, index: int,
                 settings: AugmentSettings) -> tuple[int, int, int, int] | None:
    """The crop window (top, left, height, width) of a height x width image when that window is the
    first step to read its pixels: random_resized_crop's, or the crop-size square, with no resize,
    warp or pad before it. None otherwise, and for MXNet's fallback crop."""
    if not settings.window_first:
        return None
    if settings.rrc:
        return rrc_window(height, width, params, index)
    if settings.crop_size and params.crop_size[index] <= min(height, width):
        return crop_size_window(height, width, int(params.crop_size[index]), settings.rand_crop,
                                float(params.crop_y[index]), float(params.crop_x[index]))
    return None


def dct_shrink(height: int, width: int, params: AugmentParams | None, index: int, settings: AugmentSettings,
               out_size: tuple[int, int], window: tuple[int, int, int, int] | None = None) -> int:
    """4, 2 or 1: how much smaller a height x width JPEG may be decoded, because what reads its pixels
    first (the shorter-side resize, else the random_resized_crop or crop-size window resized to the
    output) shrinks it at least that much on both axes. 1 when dct_scaling is off, when a warp or pad
    reads them first, for the nearest and area (Pillow's box) filters, which take whole source
    pixels, so that on a halved grid they take others (area: mean abs difference ~3 levels, up to
    141, on the bench's photos), for MXNet's fallback crop, and for sides under 16 px. A function of
    the size and the draws only: deterministic by seed. `window`: `first_window`'s, when the caller
    has it (else it is drawn here)."""
    if not settings.dct_scaling or settings.affine or settings.pad or min(height, width) < 2 * MIN_SHRUNK_SIDE:
        return 1
    methods = params.methods[index] if params is not None else (settings.inter_method,) * 3
    if settings.resize:
        new_size = shorter_side_shape(height, width, settings.resize)
        old_size, method = (height, width), pick_method(methods[0], (height, width), new_size)
    else:
        if height < 2 * out_size[0] or width < 2 * out_size[1]:  # no window in it can shrink 2x: no draws read
            return 1
        window = window or first_window(height, width, params, index, settings)
        if window is None:
            return 1
        new_size, old_size = out_size, tuple(window[2:])
        method = pick_method(methods[2], old_size, out_size)
    if method in (NEAREST, AREA):  # they pick whole source pixels: on a halved grid, other ones
        return 1
    for shrink in sorted(DCT_SHRINKS, reverse=True):
        if old_size[0] >= shrink * new_size[0] and old_size[1] >= shrink * new_size[1]:
            return shrink
    return 1


def scaled_crop(crop: tuple[int, int, int, int], shrink: int) -> tuple[tuple[int, int, int, int],
                                                                          tuple[float, float, float, float]]:
    """`crop` (top, left, height, width) in full-size pixels, on an image decoded at 1/shrink: the
    whole smaller pixels it touches (top, left, height, width), and the part of those it is, (y0, x0,
    y1, x1) in their pixels, which _resample resizes (exact: shrink is a power of two)."""
    top, left, height, width = crop
    y0, x0, y1, x1 = top / shrink, left / shrink, (top + height) / shrink, (left + width) / shrink
    first_row, first_column = math.floor(y0), math.floor(x0)
    touched = (first_row, first_column, math.ceil(y1) - first_row, math.ceil(x1) - first_column)
    return touched, (y0 - first_row, x0 - first_column, y1 - first_row, x1 - first_column)


def place(image: np.ndarray, params: AugmentParams | None, index: int, settings: AugmentSettings,
          out: np.ndarray, size: tuple[int, int] | None = None, shrink: int = 1) -> None:
    """Resize, warp, pad and crop one RGB image (HxWx3 uint8) into `out` (the output size).

    `params` may be None when the settings draw nothing (`settings.random` is false). A resize
    stays lazy (a `Resized` view) until a warp or pad needs its pixels, so that resize + crop
    computes only the crop's pixels. `image` may be a JPEG decoded at 1/`shrink` of its `size`
    (height, width): every step still works in full-size pixels, as `dct_shrink` allowed.
    """
    methods = params.methods[index] if params is not None else (settings.inter_method,) * 3
    view = Resized.whole(image, size, shrink)
    if settings.resize:
        height, width = shorter_side_shape(view.height, view.width, settings.resize)
        view = view.resized(height, width, pick_method(methods[0], (view.height, view.width), (height, width)))
    if settings.affine:
        view = Resized.whole(warp(view.pixels(), float(params.shear[index]), int(params.angle[index]),
                                  float(params.scale[index]), float(params.ratio[index]), settings.fill_value,
                                  settings.min_img_size, settings.max_img_size, int(methods[1])))
    if settings.pad:
        view = Resized.whole(pad(view.pixels(), settings.pad, settings.fill_value))
    out_height, out_width = out.shape[:2]
    window = None
    if settings.rrc:
        window = rrc_window(view.height, view.width, params, index)
    elif settings.crop_size:
        window = crop_size_window(view.height, view.width, int(params.crop_size[index]), settings.rand_crop,
                                  float(params.crop_y[index]), float(params.crop_x[index]))
    if window is not None:
        top, left, height, width = window
        view.window_into(top, left, height, width, out,
                         pick_method(methods[2], (height, width), (out_height, out_width)))
        return
    if settings.random_resized_crop:  # MXNet's fallback: upscaled if smaller than the output, centred
        height, width = upscaled_shape(view.height, view.width, out_height, out_width)
        if (height, width) != (view.height, view.width):
            view = Resized.whole(view.pixels()).resized(
                height, width, pick_method(methods[2], (view.height, view.width), (out_height, out_width)))
    top, left = crop_origin(view.height, view.width, out_height, out_width, settings.rand_crop,
                            float(params.crop_y[index]) if settings.rand_crop else 0.0,
                            float(params.crop_x[index]) if settings.rand_crop else 0.0)
    view.window_into(top, left, out_height, out_width, out, BILINEAR)


class Resized:
    """The window `crop` = (top, left, height, width) of `image` resized to (height, width) with
    `method`, not yet computed: a window of it is resampled straight from `image`. `crop` is in
    pixels of the full-size image, of which `image` may be a 1/`shrink` scale decode."""

    def __init__(self, image: np.ndarray, crop: tuple[int, int, int, int], height: int, width: int, method: int,
                 shrink: int = 1):
        self.image, self.crop, self.height, self.width, self.method = image, crop, height, width, method
        self.shrink = shrink

    @classmethod
    def whole(cls, image: np.ndarray, size: tuple[int, int] | None = None, shrink: int = 1) -> Resized:
        """All of `image`, or of the `size` image that `image` is a 1/`shrink` decode of."""
        height, width = size or image.shape[:2]
        return cls(image, (0, 0, height, width), height, width, BILINEAR, shrink)

    @property
    def identity(self) -> bool:
        return (self.height, self.width) == self.crop[2:]

    def resized(self, height: int, width: int, method: int) -> Resized:
        """This view resized (only from a view that is its image as is: MXNet resizes once before a crop)."""
        return Resized(self.image, self.crop, height, width, method, self.shrink)

    def pixels(self) -> np.ndarray:
        if self.identity and self.shrink == 1:
            top, left, height, width = self.crop
            return self.image[top:top + height, left:left + width]
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self.window_into(0, 0, self.height, self.width, out, BILINEAR)
        return out

    def window_into(self, top: int, left: int, height: int, width: int, out: np.ndarray, method: int) -> None:
        """The (top, left, height, width) window of this view, resized with `method` to `out`'s size."""
        out_size = out.shape[:2]
        if self.identity:  # one pass: the window read from the image, resized to out
            crop_top, crop_left = self.crop[:2]
            self.resample(out, (crop_top + top, crop_left + left, height, width), out_size, (0, 0), method)
        elif (height, width) == out_size:  # one pass: the part of the resized image that the window keeps
            self.resample(out, self.crop, (self.height, self.width), (top, left), self.method)
        else:  # resize, then resize the window: two resamplings, as MXNet does them
            window = np.empty((height, width, 3), dtype=np.uint8)
            self.resample(window, self.crop, (self.height, self.width), (top, left), self.method)
            _resample.resample(window, out, (0, 0, height, width), out_size, (0, 0), method)

    def resample(self, out: np.ndarray, crop: tuple[int, int, int, int], size: tuple[int, int],
                 origin: tuple[int, int], method: int) -> None:
        """_resample.resample from `image`, `crop` in full-size pixels (`scaled_crop` on a 1/shrink decode)."""
        touched, box = scaled_crop(crop, self.shrink)
        _resample.resample(np.ascontiguousarray(self.image), out, touched, size, origin, method, box)


def pick_method(method: int, old: tuple[int, int], new: tuple[int, int]) -> int:
    """MXNet's GetInterMethod for 9 (auto: cubic to enlarge, area to shrink, else bilinear); 10's pick
    is drawn beforehand, so any number here but 9 is the method itself."""
    if method != AUTO:
        return int(method)
    if new[0] > old[0] and new[1] > old[1]:
        return BICUBIC
    if new[0] < old[0] and new[1] < old[1]:
        return AREA
    return BILINEAR


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The shorter side `size`, the longer one in proportion (rounded down, as MXNet)."""
    if height > width:
        return size * height // width, size
    return size, size * width // height


def resize_shorter(image: np.ndarray, size: int, method: int = BILINEAR) -> np.ndarray:
    """Scales so the shorter side is `size`, the longer one in proportion (rounded down, as MXNet)."""
    height, width = shorter_side_shape(image.shape[0], image.shape[1], size)
    if (height, width) == image.shape[:2]:
        return image
    return Resized.whole(image).resized(height, width, method).pixels()


def rrc_window(height: int, width: int, params: AugmentParams, index: int) -> tuple[int, int, int, int] | None:
    """random_resized_crop's window (top, left, height, width), MXNet's way: for each try, a target
    area (fraction of the image's) and aspect ratio give sides round(sqrt(area / aspect)) and
    round(sqrt(area * aspect)), swapped on a coin; the first window that fits is placed uniformly.
    None when no try fits (the caller falls back to the centred crop, as MXNet)."""
    image_area = height * width
    for area, aspect, swap in zip(params.area[index].tolist(), params.aspect[index].tolist(),
                                  params.swap[index].tolist()):
        target = image_area * area
        crop_height, crop_width = round_half_away(math.sqrt(target / aspect)), round_half_away(math.sqrt(target * aspect))
        if swap:
            crop_height, crop_width = crop_width, crop_height
        if 0 < crop_height <= height and 0 < crop_width <= width:
            top = int(params.crop_y[index] * (height - crop_height + 1))
            left = int(params.crop_x[index] * (width - crop_width + 1))
            return top, left, crop_height, crop_width
    return None


def round_half_away(value: float) -> int:
    """C's std::round (halves away from zero), not Python's round (halves to even)."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def crop_size_window(height: int, width: int, size: int, random: bool, where_y: float,
                     where_x: float) -> tuple[int, int, int, int]:
    """The min/max_crop_size square of side `size`: at `where_*` (0-1) of the free range, or centred."""
    if size > height or size > width:
        raise ImageError(f"image is {height}x{width}, smaller than the crop of {size}x{size} "
                         f"(data.max_crop_size)")
    top, left = crop_origin(height, width, size, size, random, where_y, where_x)
    return top, left, size, size


def upscaled_shape(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
    """MXNet's centre-crop step for an image smaller than the output: scaled up (float32, truncated) so
    that it covers the output, first the height, then the width."""
    if height < out_height:
        width, height = int(np.float32(out_height) / np.float32(height) * np.float32(width)), out_height
    if width < out_width:
        height, width = int(np.float32(out_width) / np.float32(width) * np.float32(height)), out_width
    return height, width


def crop_origin(height: int, width: int, out_height: int, out_width: int, random: bool, where_y: float,
                where_x: float) -> tuple[int, int]:
    if height < out_height or width < out_width:
        raise ImageError(f"image is {height}x{width} after resize/pad, smaller than the output "
                         f"{out_height}x{out_width}: set data.resize or data.pad_size")
    if random:
        return int(where_y * (height - out_height + 1)), int(where_x * (width - out_width + 1))
    return (height - out_height) // 2, (width - out_width) // 2


def warp_matrix(shear: float, angle: int, scale: float, ratio: float, height: int, width: int,
                min_img_size: float = 0.0, max_img_size: float = 0.0) -> tuple[np.ndarray, int, int]:
    """MXNet's affine map (source pixel -> output pixel, 2x3) and the output's height and width, each
    clamped to [min_img_size, max_img_size] (0: no limit): the canvas, not the scale, so a limit crops
    or pads round the centred image, as MXNet's does."""
    cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    height_scale = 2 * scale / (1 + ratio)
    width_scale = ratio * height_scale
    new_width, new_height = scale * width, scale * height
    if max_img_size:
        new_width, new_height = min(max_img_size, new_width), min(max_img_size, new_height)
    new_width, new_height = int(max(min_img_size, new_width)), int(max(min_img_size, new_height))
    matrix = np.array([
        [height_scale * cos - shear * sin * width_scale, height_scale * sin + shear * cos * width_scale, 0.0],
        [-sin * width_scale, cos * width_scale, 0.0],
    ])
    # Centre the warped image in the output.
    matrix[:, 2] = (np.array([new_width, new_height]) - matrix[:, :2] @ np.array([width, height])) / 2
    return matrix, new_height, new_width


def warp(image: np.ndarray, shear: float, angle: int, scale: float, ratio: float, fill_value: int,
         min_img_size: float = 0.0, max_img_size: float = 0.0, method: int = BILINEAR) -> np.ndarray:
    """The affine warp of ImageRecordIter (uncovered corners in `fill_value`): bilinear, or nearest or
    bicubic for those inter_methods (Pillow's transform has no area or lanczos: those warp bilinear)."""
    height, width = image.shape[:2]
    matrix, new_height, new_width = warp_matrix(shear, angle, scale, ratio, height, width, min_img_size, max_img_size)
    if new_height < 1 or new_width < 1:
        raise ImageError(f"random scale {scale:.3f} (or data.max_img_size) shrinks a {height}x{width} image to nothing")
    inverse = np.linalg.inv(matrix[:, :2])
    shift = -inverse @ matrix[:, 2]
    # Pillow samples the source at inverse @ (x + 0.5, y + 0.5) + c with pixel centres at +0.5;
    # this c makes that the pixel-index mapping OpenCV's warpAffine uses.
    shift = shift + 0.5 - inverse @ np.array([0.5, 0.5])
    coefficients = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    warped = Image.fromarray(image).transform((new_width, new_height), Image.Transform.AFFINE, coefficients,
                                               resample=_WARP_FILTERS.get(method, Image.Resampling.BILINEAR),
                                               fillcolor=(fill_value,) * 3)
    return np.asarray(warped)


def pad(image: np.ndarray, size: int, fill_value: int) -> np.ndarray:
    """`size` pixels of `fill_value` on every side."""
    height, width = image.shape[:2]
    padded = np.full((height + 2 * size, width + 2 * size, 3), fill_value, dtype=np.uint8)
    padded[size:size + height, size:size + width] = image
    return padded


def crop_into(image: np.ndarray, where_y: float, where_x: float, random: bool, out: np.ndarray) -> None:
    """Copies the out-sized window of `image` into `out`: at `where_*` (0-1) of the free range, or centred."""
    out_height, out_width = out.shape[:2]
    top, left = crop_origin(image.shape[0], image.shape[1], out_height, out_width, random, where_y, where_x)
    out[...] = image[top:top + out_height, left:left + out_width]


# --------------------------------------------------------------------------- per slice: colour, mirror, normalize


def finish(images: np.ndarray, params: AugmentParams | None, settings: AugmentSettings,
           out: np.ndarray | None = None, mean: np.ndarray | None = None, inv_std: np.ndarray | None = None,
           flip: bool = True) -> None:
    """Colour jitter, HSL jitter, PCA noise and mirror on a slice of output-sized images (n, H, W, 3)
    uint8, in place, in MXNet's order; with `out`, the normalization to float32 NCHW `out` too, the
    mirror done on the way (`params` None when the settings draw nothing).

    `flip` False leaves the mirror to whoever takes the images (`params.mirror` says which). The
    mirror is the last step before normalization, which works per pixel, and it commutes with the
    colour steps too (per pixel, or a whole image's mean, which a flip leaves as it is): the images
    flipped later, on the device, before or after normalizing, have the very values flipping here gives."""
    if settings.jitter:
        for image, alphas, order in zip(images, params.alphas, params.order):
            jitter_colour(image, alphas, order)
    if settings.colour:
        jitter_hls(images, params.hls)
    if settings.pca_noise:
        for image, offsets in zip(images, params.pca):
            add_lighting(image, offsets)
    flags = params.mirror if settings.rand_mirror and flip else None
    if out is not None:
        normalize(images, out, mean, inv_std, flags)
    elif flags is not None:
        mirror(images, flags)


def grey(image: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point RGB2GRAY as MXNet calls it: on its BGR pixels, so 0.299 weighs blue and
    0.114 red (kept: it is what ImageRecordIter's contrast and saturation compute). uint8 (H, W)."""
    weighted = (image[..., 0].astype(np.int32) * 1868 + image[..., 1].astype(np.int32) * 9617
                + image[..., 2].astype(np.int32) * 4899 + (1 << 13))
    return (weighted >> 14).astype(np.uint8)


def _saturate(values: np.ndarray) -> np.ndarray:
    """OpenCV's saturate_cast<uchar> of a float: round half to even, clip to 0-255."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def jitter_colour(image: np.ndarray, alphas: np.ndarray, order: np.ndarray) -> None:
    """MXNet's brightness, contrast and saturation jitter on one HxWx3 uint8 image, in place, in
    `order` (0 brightness, 1 contrast, 2 saturation), float32 as OpenCV's convertTo/addWeighted:
    brightness x * a; contrast x * a + (1 - a) * mean(grey); saturation x * a + grey * (1 - a)."""
    for step in order.tolist():
        alpha = np.float32(alphas[step])
        pixels = image.astype(np.float32)
        if step == 0:
            image[...] = _saturate(pixels * alpha)
        elif step == 1:
            shift = np.float32((1 - float(alpha)) * float(grey(image).mean()))
            image[...] = _saturate(pixels * alpha + shift)
        else:
            grey_pixels = grey(image).astype(np.float32)[..., None]
            image[...] = _saturate(pixels * alpha + grey_pixels * (np.float32(1) - alpha))


def add_lighting(image: np.ndarray, offsets: np.ndarray) -> None:
    """MXNet's PCA noise on one HxWx3 uint8 image, in place: each channel plus its float32 offset,
    truncated towards zero (C's int += float), clipped to 0-255."""
    shifted = np.trunc(image.astype(np.float32) + offsets.astype(np.float32))
    image[...] = np.clip(shifted, 0, 255).astype(np.uint8)


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
