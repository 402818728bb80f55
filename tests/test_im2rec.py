"""flow im2rec: lists made as MXNet's im2rec makes them, and records packed from them."""

import io
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from flow.cli import main
from flow.image import decode, encode
from flow.recordio import IndexedRecordReader, unpack
from tests.fixtures import MXNET_FIXTURES as FIXTURES, PASSTHROUGH_RECORDS


def make_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(pixels, encoding=path.suffix.lower(), quality=90))
    return pixels


def read_lst(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def records_of(rec_path: Path) -> list:
    with IndexedRecordReader(rec_path) as reader:
        return [unpack(reader.read_position(position)) for position in range(len(reader))]


def test_pass_through_reproduces_mxnet_files_byte_for_byte(tmp_path):
    shutil.copy(FIXTURES / "passthrough.lst", tmp_path / "passthrough.lst")
    # Several threads: the records must still come out in .lst order.
    argv = ["im2rec", "--pass-through", "--num-thread", "3", str(tmp_path / "passthrough"), str(FIXTURES / "images")]
    assert main(argv) == 0
    assert (tmp_path / "passthrough.rec").read_bytes() == (FIXTURES / "passthrough.rec").read_bytes()
    assert (tmp_path / "passthrough.idx").read_bytes() == (FIXTURES / "passthrough.idx").read_bytes()


def test_summary_line_counts_records_and_bytes(tmp_path, capsys):
    shutil.copy(FIXTURES / "passthrough.lst", tmp_path / "data.lst")
    assert main(["im2rec", "--pass-through", str(tmp_path / "data"), str(FIXTURES / "images")]) == 0
    size = (tmp_path / "data.rec").stat().st_size
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"im2rec: wrote {PASSTHROUGH_RECORDS} records, {size} bytes to {tmp_path / 'data.rec'} in ")
    assert summary.endswith(" seconds")


def make_class_tree(root: Path) -> None:
    make_image(root / "top.jpg", 8, 8)  # the root itself holds an image: it is the first class
    make_image(root / "b_dogs" / "x.jpg", 8, 8)
    make_image(root / "a_cats" / "2.png", 8, 8)
    make_image(root / "a_cats" / "1.JPG", 8, 8)
    (root / "c_empty").mkdir()
    (root / "c_empty" / "notes.txt").write_text("not an image")
    make_image(root / "d" / "sub" / "e.jpeg", 8, 8)  # d has no images of its own: no class for it


def test_list_recursive_numbers_classes_in_sorted_folder_order(tmp_path, capsys):
    root = tmp_path / "images"
    make_class_tree(root)
    prefix = tmp_path / "data"
    assert main(["im2rec", "--list", "--recursive", "--no-shuffle", str(prefix), str(root)]) == 0
    assert read_lst(tmp_path / "data.lst") == [
        ["0", "0.000000", "top.jpg"],
        ["1", "1.000000", "a_cats/1.JPG"],
        ["2", "1.000000", "a_cats/2.png"],
        ["3", "2.000000", "b_dogs/x.jpg"],
        ["4", "3.000000", "d/sub/e.jpeg"],
    ]
    assert capsys.readouterr().out.splitlines() == [". 0", "a_cats 1", "b_dogs 2", "d/sub 3"]


def test_list_without_recursive_takes_root_files_with_label_zero(tmp_path):
    root = tmp_path / "images"
    make_class_tree(root)
    make_image(root / "z.png", 8, 8)
    # --exts takes several values, so it goes after the positionals (as with im2rec).
    assert main(["im2rec", "--list", "--no-shuffle", str(tmp_path / "flat"), str(root), "--exts", ".jpg"]) == 0
    assert read_lst(tmp_path / "flat.lst") == [["0", "0.000000", "top.jpg"]]


def make_flat_folder(root: Path, count: int) -> list[str]:
    names = [f"{number:03d}.jpg" for number in range(count)]
    for name in names:
        make_image(root / name, 4, 4)
    return names


def test_shuffle_is_pythons_random_seed_100_shuffle(tmp_path):
    names = make_flat_folder(tmp_path / "images", 20)
    expected = list(enumerate(names))
    random.seed(100)
    random.shuffle(expected)
    for prefix in ("first", "second"):
        assert main(["im2rec", "--list", "--shuffle", str(tmp_path / prefix), str(tmp_path / "images")]) == 0
        assert [(int(index), name) for index, _, name in read_lst(tmp_path / f"{prefix}.lst")] == expected
    assert main(["im2rec", "--list", "--seed", "7", str(tmp_path / "other"), str(tmp_path / "images")]) == 0
    assert read_lst(tmp_path / "other.lst") != read_lst(tmp_path / "first.lst")


def test_ratios_and_chunks_split_as_im2rec(tmp_path):
    make_flat_folder(tmp_path / "images", 10)
    argv = ["im2rec", "--list", "--no-shuffle", "--train-ratio", "0.6", "--test-ratio", "0.2"]
    assert main(argv + [str(tmp_path / "split"), str(tmp_path / "images")]) == 0
    indices = {name: [int(line[0]) for line in read_lst(tmp_path / f"split_{name}.lst")] for name in ("test", "train", "val")}
    assert indices == {"test": [0, 1], "train": [2, 3, 4, 5, 6, 7], "val": [8, 9]}
    assert not (tmp_path / "split.lst").exists()

    # 10 images in 3 chunks of 4: splits are sized from the chunk size, so the last chunk of 2 has no val.
    assert main(argv + ["--chunks", "3", str(tmp_path / "chunked"), str(tmp_path / "images")]) == 0
    sizes = {path.name: len(read_lst(path)) for path in sorted(tmp_path.glob("chunked_*.lst"))}
    assert sizes == {
        "chunked_0_test.lst": 0, "chunked_0_train.lst": 2, "chunked_0_val.lst": 2,
        "chunked_1_test.lst": 0, "chunked_1_train.lst": 2, "chunked_1_val.lst": 2,
        "chunked_2_test.lst": 0, "chunked_2_train.lst": 2, "chunked_2_val.lst": 0,
    }


def test_resize_and_center_crop_give_decodable_images_of_the_right_shape(tmp_path):
    root = tmp_path / "images"
    make_image(root / "wide.jpg", 24, 40)
    make_image(root / "tall.png", 50, 20)
    (tmp_path / "resized.lst").write_text("0\t0\twide.jpg\n1\t1\ttall.png\n")
    (tmp_path / "cropped.lst").write_text("0\t0\twide.jpg\n1\t1\ttall.png\n")

    assert main(["im2rec", "--resize", "16", str(tmp_path / "resized"), str(root)]) == 0
    shapes = [decode(payload).shape for _, payload in records_of(tmp_path / "resized.rec")]
    assert shapes == [(16, 26, 3), (40, 16, 3)]  # shorter side 16, the other int(long * 16 / short)

    assert main(["im2rec", "--resize", "16", "--center-crop", str(tmp_path / "cropped"), str(root)]) == 0
    shapes = [decode(payload).shape for _, payload in records_of(tmp_path / "cropped.rec")]
    assert shapes == [(16, 16, 3), (16, 16, 3)]


def test_png_encoding_keeps_pixels_exactly(tmp_path):
    pixels = make_image(tmp_path / "images" / "a.png", 12, 9, seed=3)
    (tmp_path / "data.lst").write_text("7\t2\ta.png\n")
    assert main(["im2rec", "--encoding", ".png", str(tmp_path / "data"), str(tmp_path / "images")]) == 0
    [(header, payload)] = records_of(tmp_path / "data.rec")
    assert (header.flag, header.label, header.id, header.id2) == (0, 2.0, 7, 0)
    assert np.array_equal(decode(payload), pixels)
    assert (tmp_path / "data.idx").read_text() == "7\t0\n"


def test_color_zero_stores_gray_images(tmp_path):
    make_image(tmp_path / "images" / "a.jpg", 8, 8)
    (tmp_path / "data.lst").write_text("0\t0\ta.jpg\n")
    assert main(["im2rec", "--color", "0", "--encoding", ".png", str(tmp_path / "data"), str(tmp_path / "images")]) == 0
    [(_, payload)] = records_of(tmp_path / "data.rec")
    assert Image.open(io.BytesIO(payload)).mode == "L"


def test_color_minus_one_keeps_alpha_in_png_and_drops_it_in_jpeg(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(rgba).save(tmp_path / "images" / "a.png")
    for name, encoding, mode in (("keep", ".png", "RGBA"), ("drop", ".jpg", "RGB")):
        (tmp_path / f"{name}.lst").write_text("0\t0\ta.png\n")
        argv = ["im2rec", "--color", "-1", "--encoding", encoding, str(tmp_path / name), str(tmp_path / "images")]
        assert main(argv) == 0
        [(_, payload)] = records_of(tmp_path / f"{name}.rec")
        assert Image.open(io.BytesIO(payload)).mode == mode
    [(_, payload)] = records_of(tmp_path / "keep.rec")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(payload))), rgba)


def test_exif_orientation_turns_photos_upright_as_opencv_does(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: 20 wide, 10 high, shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buffer, format="JPEG", exif=exif)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "photo.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "data.lst").write_text("0\t0\tphoto.jpg\n")
    assert main(["im2rec", str(tmp_path / "data"), str(tmp_path / "images")]) == 0
    [(_, payload)] = records_of(tmp_path / "data.rec")
    assert decode(payload).shape == (20, 10, 3)


def test_pack_label_stores_every_label(tmp_path):
    make_image(tmp_path / "images" / "a.jpg", 8, 8)
    lst = "0\t5\t2\t0.25\ta.jpg\n1\t3\ta.jpg\n"
    (tmp_path / "multi.lst").write_text(lst)
    (tmp_path / "first.lst").write_text(lst)
    images = str(tmp_path / "images")

    assert main(["im2rec", "--pass-through", "--pack-label", str(tmp_path / "multi"), images]) == 0
    [(multi, _), (single, _)] = records_of(tmp_path / "multi.rec")
    assert multi.flag == 3 and multi.label.tolist() == [5.0, 2.0, 0.25]
    assert (single.flag, single.label) == (0, 3.0)  # one label: a plain header, as im2rec

    assert main(["im2rec", "--pass-through", str(tmp_path / "first"), images]) == 0
    [(first, _), _] = records_of(tmp_path / "first.rec")
    assert (first.flag, first.label) == (0, 5.0)


def test_every_list_with_the_prefix_is_packed_to_its_own_rec(tmp_path):
    make_flat_folder(tmp_path / "images", 10)
    assert main(["im2rec", "--list", "--train-ratio", "0.8", str(tmp_path / "data"), str(tmp_path / "images")]) == 0
    assert main(["im2rec", "--pass-through", str(tmp_path / "data"), str(tmp_path / "images")]) == 0
    assert len(records_of(tmp_path / "data_train.rec")) == 8
    assert len(records_of(tmp_path / "data_val.rec")) == 2


def test_bad_lst_line_names_file_line_and_offset(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.lst").write_text("0\t1\ta.jpg\n1\tb.jpg\n")
    assert main(["im2rec", str(tmp_path / "data"), str(tmp_path / "images")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert f"{tmp_path / 'data.lst'}: at byte 10: line 2:" in line


def test_missing_root_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "data.lst").write_text("0\t1\ta.jpg\n")
    assert main(["im2rec", str(tmp_path / "data"), str(tmp_path / "no-such-folder")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"flow im2rec: error: {tmp_path / 'no-such-folder'}: no such image folder"


def test_undecodable_image_stops_the_run_or_is_skipped_with_skip_bad(tmp_path, capsys):
    make_image(tmp_path / "images" / "good.jpg", 8, 8)
    (tmp_path / "images" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "data.lst").write_text("0\t0\tgood.jpg\n1\t0\tbad.jpg\n2\t0\tmissing.jpg\n")
    images = str(tmp_path / "images")

    assert main(["im2rec", str(tmp_path / "data"), images]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert str(tmp_path / "images" / "bad.jpg") in line
    assert not (tmp_path / "data.rec").exists()

    assert main(["im2rec", "--skip-bad", str(tmp_path / "data"), images]) == 0
    assert capsys.readouterr().out.strip().endswith(", skipped 2 bad images")
    assert [header.id for header, _ in records_of(tmp_path / "data.rec")] == [0]
