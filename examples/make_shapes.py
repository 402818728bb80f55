"""Makes the bundled example images: 10 classes of simple shapes, 32x32, with random colours and jitter.

    python examples/make_shapes.py OUT_DIR [--per-class 250] [--seed 0]

Writes OUT_DIR/<class>/<n>.png (PNG, so the pixels are exactly what was drawn). Then
`flow im2rec --list --recursive` and `flow im2rec` turn the folder into .rec files, which is
how examples/data/ was made (see examples/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
CLASSES = ["circle", "square", "triangle_up", "triangle_down", "bar_horizontal",
           "bar_vertical", "plus", "cross", "ring", "diamond"]


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    width = max(2, int(r / 3))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "triangle_up":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "triangle_down":
        draw.polygon([(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)], fill=colour)
    elif kind == "bar_horizontal":
        draw.rectangle([cx - r, cy - width, cx + r, cy + width], fill=colour)
    elif kind == "bar_vertical":
        draw.rectangle([cx - width, cy - r, cx + width, cy + r], fill=colour)
    elif kind == "plus":
        draw.rectangle([cx - r, cy - width, cx + r, cy + width], fill=colour)
        draw.rectangle([cx - width, cy - r, cx + width, cy + r], fill=colour)
    elif kind == "cross":
        draw.line([cx - r, cy - r, cx + r, cy + r], fill=colour, width=2 * width)
        draw.line([cx - r, cy + r, cx + r, cy - r], fill=colour, width=2 * width)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)


def make_image(kind: str, rng: np.random.Generator) -> np.ndarray:
    background = rng.integers(0, 120, size=3)
    colour = tuple(int(c) for c in rng.integers(130, 256, size=3))
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in background))
    radius = rng.uniform(7, 12)
    cx, cy = rng.uniform(radius + 1, SIZE - radius - 1, size=2)
    draw_shape(ImageDraw.Draw(image), kind, cx, cy, radius, colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, size=(SIZE, SIZE, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for label, kind in enumerate(CLASSES):
        folder = args.out_dir / f"{label}_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(args.per_class):
            Image.fromarray(make_image(kind, rng)).save(folder / f"{number:05d}.png")


if __name__ == "__main__":
    main()
