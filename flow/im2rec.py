"""Image folders to RecordIO, as MXNet's tools/im2rec.py: make .lst lists, pack them into .rec + .idx.

  flow im2rec --list --recursive PREFIX ROOT   list ROOT's images into PREFIX.lst
                                               (PREFIX_train/_val/_test.lst with ratios, _N per chunk)
  flow im2rec PREFIX ROOT                      pack every PREFIX*.lst into a .rec and .idx of the
                                               same name (PREFIX.lst -> PREFIX.rec + PREFIX.idx)

Lists, their order (shuffled with random.seed(100) unless --no-shuffle), names and line format
are im2rec's, so an MXNet user's files and commands carry over; --pass-through records are byte
for byte im2rec's. Re-encoded records hold the same kind of image, but not the same bytes: flow
encodes with libjpeg-turbo / Pillow and resizes with Pillow's bilinear filter, not OpenCV's.

--color: 1 = colour (RGB), 0 = gray (1 channel), -1 = as stored: gray stays gray and an alpha
channel is kept (only .png can hold it; .jpg drops it); other modes (16-bit, CMYK, palette)
become 8-bit RGB. Like cv2.imread, 1 and 0 turn photos upright by their EXIF orientation.
--quality is the JPEG quality (1-100) or, for .png, the zlib level 0-9; larger values count as 9,
as OpenCV does, so im2rec's default 95 means level 9 for .png.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import simplejpeg
from PIL import Image, ImageOps
from tqdm import tqdm

from flow.atomic import write_atomically
from flow.errors import FlowError, ImageError
from flow.image import center_crop_square, decode, encode, is_jpeg, resize_shorter
from flow.recordio import IRHeader, RecordWriter, pack

# Images per task handed to a thread: large enough that the pool's overhead is small.
_BATCH = 32
_EXIF_ORIENTATION = 0x0112


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="prefix of the .lst files to write or read; the .rec files go beside them")
    parser.add_argument("root", help="folder holding the images (paths in the .lst are relative to it)")

    lists = parser.add_argument_group("making image lists (--list)")
    lists.add_argument("--list", action="store_true", help="write .lst files from ROOT instead of packing")
    lists.add_argument("--recursive", action="store_true",
                       help="walk sub-folders; each folder holding images is a class, numbered in sorted order")
    lists.add_argument("--exts", nargs="+", default=[".jpeg", ".jpg", ".png"], help="image file extensions")
    lists.add_argument("--train-ratio", type=float, default=1.0, help="share of each chunk for PREFIX_train.lst")
    lists.add_argument("--test-ratio", type=float, default=0.0, help="share of each chunk for PREFIX_test.lst")
    lists.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                       help="shuffle the list before splitting, as im2rec does unless --no-shuffle")
    lists.add_argument("--seed", type=int, default=100, help="shuffle seed (im2rec's is 100)")
    lists.add_argument("--chunks", type=int, default=1, help="split the list into this many chunks (PREFIX_N...)")

    records = parser.add_argument_group("packing records (without --list)")
    records.add_argument("--pass-through", action="store_true", help="store each file's bytes unchanged")
    records.add_argument("--resize", type=int, default=0, metavar="N", help="scale the shorter side to N pixels")
    records.add_argument("--center-crop", action="store_true", help="crop the largest centred square (before --resize)")
    records.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100, or PNG zlib level 0-9")
    records.add_argument("--encoding", choices=[".jpg", ".png"], default=".jpg", help="format of re-encoded images")
    records.add_argument("--color", type=int, choices=[-1, 0, 1], default=1,
                         help="1 colour, 0 gray, -1 as stored (see above)")
    records.add_argument("--pack-label", action="store_true",
                         help="store every label of a multi-label line (flag N header), not just the first")
    records.add_argument("--num-thread", type=int, default=os.cpu_count() or 1, help="encoding threads")
    records.add_argument("--skip-bad", action="store_true",
                         help="skip images that cannot be read or decoded (and count them) instead of stopping")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise FlowError("no such image folder", root)
    if args.list:
        make_lists(args.prefix, root, recursive=args.recursive, exts=args.exts, shuffle=args.shuffle,
                   seed=args.seed, chunks=args.chunks, train_ratio=args.train_ratio, test_ratio=args.test_ratio)
        return 0
    options = PackOptions(pass_through=args.pass_through, resize=args.resize, center_crop=args.center_crop,
                          quality=args.quality, encoding=args.encoding, color=args.color, pack_label=args.pack_label)
    options.check()
    if args.num_thread < 1:
        raise FlowError(f"--num-thread must be at least 1, got {args.num_thread}")
    lists = find_lists(args.prefix)
    if not lists:
        raise FlowError("no .lst file starts with this prefix", os.path.abspath(args.prefix))
    for list_path in lists:
        pack_list(list_path, root, options, num_threads=args.num_thread, skip_bad=args.skip_bad)
    return 0


# --------------------------------------------------------------------------- making lists


class ListItem(NamedTuple):
    """One `.lst` line: `index<TAB>label...<TAB>path`."""

    index: int
    path: str
    labels: tuple[float, ...]


def list_images(root: Path, recursive: bool, exts: Iterable[str]) -> tuple[list[ListItem], list[tuple[str, int]]]:
    """The images under `root` in im2rec's order, and each class folder (relative) with its id.

    Recursive: folders are walked in sorted order and a folder gets the next id when its first
    image is found, so folders without images get none. Otherwise: `root`'s own files, label 0.
    """
    exts = {ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in exts}
    items: list[ListItem] = []
    classes: dict[str, int] = {}

    def is_image(folder: str, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in exts and os.path.isfile(os.path.join(folder, name))

    if recursive:
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders.sort()
            for name in sorted(files):
                if is_image(folder, name):
                    label = classes.setdefault(folder, len(classes))
                    items.append(ListItem(len(items), os.path.relpath(os.path.join(folder, name), root), (label,)))
    else:
        for name in sorted(os.listdir(root)):
            if is_image(root, name):
                items.append(ListItem(len(items), name, (0,)))
    return items, [(os.path.relpath(folder, root), label) for folder, label in classes.items()]


def split_lists(items: list[ListItem], chunks: int, train_ratio: float, test_ratio: float) -> dict[str, list[ListItem]]:
    """File-name suffix -> items, exactly as im2rec's make_list cuts chunks and ratios."""
    chunk_size = (len(items) + chunks - 1) // chunks
    # im2rec sizes the splits from chunk_size, not from the (possibly shorter) last chunk.
    train_size = int(chunk_size * train_ratio)
    test_size = int(chunk_size * test_ratio)
    lists = {}
    for number in range(chunks):
        chunk = items[number * chunk_size : (number + 1) * chunk_size]
        suffix = f"_{number}" if chunks > 1 else ""
        if train_ratio == 1.0:
            lists[suffix + ".lst"] = chunk
            continue
        if test_ratio:
            lists[suffix + "_test.lst"] = chunk[:test_size]
        if train_ratio + test_ratio < 1.0:
            lists[suffix + "_val.lst"] = chunk[test_size + train_size :]
        lists[suffix + "_train.lst"] = chunk[test_size : test_size + train_size]
    return lists


def format_list(items: Iterable[ListItem]) -> str:
    """`.lst` text as im2rec's write_list: '%d' index, '%f' labels, path, tab-separated."""
    return "".join(
        f"{item.index}\t" + "".join("%f\t" % label for label in item.labels) + f"{item.path}\n" for item in items
    )


def make_lists(prefix: str, root: Path, *, recursive: bool, exts: Iterable[str], shuffle: bool, seed: int,
               chunks: int, train_ratio: float, test_ratio: float) -> list[Path]:
    """Writes the `.lst` files for the images under `root`; returns their paths."""
    if chunks < 1:
        raise FlowError(f"--chunks must be at least 1, got {chunks}")
    if not (0 <= train_ratio <= 1 and 0 <= test_ratio <= 1 and train_ratio + test_ratio <= 1 + 1e-9):
        raise FlowError(f"--train-ratio {train_ratio} and --test-ratio {test_ratio} must be in [0, 1] and sum to at most 1")
    items, classes = list_images(root, recursive, exts)
    if not items:
        raise FlowError(f"no images with extensions {' '.join(exts)}", root)
    for folder, label in classes:
        print(folder, label)
    if shuffle:
        # A private generator, seeded as im2rec seeds the global one: same order, no side effects.
        random.Random(seed).shuffle(items)
    written = []
    for suffix, chunk in split_lists(items, chunks, train_ratio, test_ratio).items():
        path = Path(os.fspath(prefix) + suffix)
        write_atomically(path, format_list(chunk).encode("utf-8"))
        written.append(path)
    return written


# --------------------------------------------------------------------------- packing records


def find_lists(prefix: str) -> list[Path]:
    """The `.lst` files im2rec packs for `prefix`: files whose path starts with it (all of a folder's if it is one)."""
    prefix = os.path.abspath(prefix)
    folder = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        raise FlowError(f"cannot list folder: {error.strerror}", folder) from None
    paths = [os.path.join(folder, name) for name in names if name.endswith(".lst")]
    return [Path(path) for path in paths if path.startswith(prefix) and os.path.isfile(path)]


def read_list(path: Path) -> list[ListItem]:
    """The items of a `.lst` file; a malformed line is an error naming the file, line and byte offset."""
    try:
        text = path.read_bytes()
    except OSError as error:
        raise FlowError(f"cannot read: {error.strerror}", path) from None
    items = []
    offset = 0
    for number, raw_line in enumerate(text.splitlines(keepends=True), start=1):
        line_offset, offset = offset, offset + len(raw_line)
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FlowError(f"line {number}: not UTF-8 text", path, line_offset) from None
        if not line:
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) < 3:
            raise FlowError(f"line {number}: expected 'index<TAB>label...<TAB>path', got {line!r}", path, line_offset)
        try:
            index = int(fields[0])
            labels = tuple(float(field) for field in fields[1:-1])
        except ValueError:
            raise FlowError(f"line {number}: index must be an integer and labels numbers, got {line!r}",
                            path, line_offset) from None
        if index < 0:
            raise FlowError(f"line {number}: index must not be negative, got {index}", path, line_offset)
        items.append(ListItem(index, fields[-1], labels))
    return items


@dataclass(frozen=True)
class PackOptions:
    """How an image becomes a record (im2rec's options of the same names)."""

    pass_through: bool = False
    resize: int = 0
    center_crop: bool = False
    quality: int = 95
    encoding: str = ".jpg"
    color: int = 1
    pack_label: bool = False

    def check(self) -> None:
        if self.pass_through and (self.resize or self.center_crop):
            raise FlowError("--pass-through stores files unchanged: it cannot be combined with --resize or --center-crop")
        if self.resize < 0:
            raise FlowError(f"--resize must not be negative, got {self.resize}")
        if self.encoding == ".jpg" and not 1 <= self.quality <= 100:
            raise FlowError(f"--quality for .jpg must be 1-100, got {self.quality}")
        if self.quality < 0:
            raise FlowError(f"--quality must not be negative, got {self.quality}")


def _exif_orientation(data: bytes) -> int:
    # Few JPEGs carry EXIF, so look for its marker before asking Pillow to parse the header.
    if data.find(b"Exif\0\0", 0, 65536) < 0:
        return 1
    with Image.open(io.BytesIO(data)) as image:
        return image.getexif().get(_EXIF_ORIENTATION, 1)


def load_pixels(data: bytes, color: int = 1) -> np.ndarray:
    """The image's pixels as cv2.imread(path, color) gives them, but RGB: HxWx3, HxW gray, or HxWx4."""
    try:
        upright = color == -1 or not is_jpeg(data) or _exif_orientation(data) == 1
        if upright and color == 1 and is_jpeg(data):
            return decode(data)
        if upright and color == 0 and is_jpeg(data):
            return simplejpeg.decode_jpeg(data, colorspace="GRAY")[:, :, 0]
        with Image.open(io.BytesIO(data)) as image:
            if color == -1:
                has_alpha = "A" in image.getbands() or "transparency" in image.info
                mode = "L" if image.mode in ("1", "L") else "RGBA" if has_alpha else "RGB"
                return np.asarray(image.convert(mode))
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB" if color == 1 else "L"))
    except (ValueError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {error}") from None


def encode_record(item: ListItem, root: Path, options: PackOptions) -> bytes:
    """The record for one `.lst` item: IRHeader(flag, label, index, 0) + the image's bytes."""
    # As im2rec: every label only with --pack-label and more than one; otherwise the first.
    label = list(item.labels) if options.pack_label and len(item.labels) > 1 else item.labels[0]
    header = IRHeader(0, label, item.index, 0)
    path = root / item.path
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image: {error.strerror}", path) from None
    if options.pass_through:
        return pack(header, data)
    try:
        image = load_pixels(data, options.color)
    except ImageError as error:
        raise ImageError(error.message, path) from None
    if options.center_crop:
        image = center_crop_square(image)
    if options.resize:
        image = resize_shorter(image, options.resize)
    if options.encoding == ".jpg" and image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # JPEG has no alpha; OpenCV drops it too
    return pack(header, encode(image, encoding=options.encoding, quality=options.quality))


def _ordered_map(pool: ThreadPoolExecutor, function: Callable, batches: Iterable, lookahead: int) -> Iterator:
    """function(batch) for each batch, in order, like pool.map, but with at most `lookahead` batches
    submitted ahead, so a slow first image cannot let a whole data set's records pile up in memory."""
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.submit(function, batch))
        if len(pending) >= lookahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass
class PackSummary:
    rec_path: Path
    records: int
    bytes: int
    skipped: int
    seconds: float

    def __str__(self) -> str:
        line = f"im2rec: wrote {self.records} records, {self.bytes} bytes to {self.rec_path} in {self.seconds:.2f} seconds"
        return line + (f", skipped {self.skipped} bad images" if self.skipped else "")


def pack_list(list_path: Path, root: Path, options: PackOptions, *, num_threads: int = 1,
              skip_bad: bool = False) -> PackSummary:
    """Packs one `.lst` into the `.rec` and `.idx` beside it (same name), records in list order."""
    started = time.perf_counter()
    items = read_list(list_path)
    rec_path = list_path.with_suffix(".rec")

    def encode_batch(batch: list[ListItem]) -> list[tuple[int, bytes | None, str | None]]:
        results = []
        for item in batch:
            try:
                results.append((item.index, encode_record(item, root, options), None))
            except FlowError as error:
                if not skip_bad:
                    raise
                results.append((item.index, None, str(error)))
        return results

    batches = [items[start : start + _BATCH] for start in range(0, len(items), _BATCH)]
    written = skipped = 0
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="im2rec")
    try:
        with RecordWriter(rec_path, index=True) as writer, \
                tqdm(total=len(items), desc=list_path.name, unit="img", disable=None) as progress:
            for results in _ordered_map(pool, encode_batch, batches, lookahead=4 * num_threads):
                for key, record, problem in results:
                    if record is None:
                        progress.write(f"im2rec: skipped {problem}", file=sys.stderr)
                        skipped += 1
                    else:
                        writer.write(record, key=key)
                        written += 1
                progress.update(len(results))
            size = writer.tell()
    finally:
        pool.shutdown(cancel_futures=True)
    summary = PackSummary(rec_path, written, size, skipped, time.perf_counter() - started)
    print(summary)
    return summary

