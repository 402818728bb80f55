"""flow inspect: summaries of MXNet's own .rec files, and damage reported at its exact byte."""

import contextlib
import io
import json
import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flow.cli import main
from flow.recordio import read_index
from tests.fixtures import MXNET_FIXTURES as FIXTURES
from tests.fixtures import fuzz_examples, mutated, small_image_rec
from tests.test_recordio import EDITS, INDEX_LINES


def inspect_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["inspect", "--json", *map(str, argv)])
    return code, json.loads(capsys.readouterr().out)


def test_train_rec_summary(capsys):
    code, report = inspect_json(capsys, FIXTURES / "train.rec")
    assert code == 0
    assert report["records"] == 800
    assert report["bytes"] == (FIXTURES / "train.rec").stat().st_size
    assert report["labels"]["width"] == {"min": 1, "max": 1}
    assert sorted(report["labels"]["first_label_counts"]) == [str(label) for label in range(10)]
    assert sum(report["labels"]["first_label_counts"].values()) == 800
    assert report["image_size"] == {"height": [64, 64], "width": [64, 64]}
    assert report["index"]["ok"] and report["index"]["entries"] == 800
    assert report["integrity"]["ok"]


def test_text_output_ends_with_index_and_integrity(capsys):
    assert main(["inspect", str(FIXTURES / "train.rec")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "records: 800" in lines
    assert "image size: height 64-64, width 64-64" in lines
    assert lines[-2].startswith("index: ") and "800 entries, agrees" in lines[-2]
    assert lines[-1] == "integrity: ok"


def test_multilabel_rec_reports_width_and_first_label(capsys):
    code, report = inspect_json(capsys, FIXTURES / "multilabel.rec")
    assert code == 0
    assert report["records"] == 50
    assert report["labels"]["width"] == {"min": 3, "max": 3}
    assert sum(report["labels"]["first_label_counts"].values()) == 50


def test_raw_rec_counts_any_payloads(capsys):
    code, report = inspect_json(capsys, "--raw", FIXTURES / "raw.rec")
    assert code == 0
    assert report["records"] == 64
    assert report["record_bytes"]["min"] == 0  # raw.rec holds empty payloads too
    assert "labels" not in report and "image_size" not in report
    assert report["index"]["ok"] and report["integrity"]["ok"]


def copy_train(tmp_path: Path, with_index: bool) -> Path:
    rec = tmp_path / "train.rec"
    shutil.copy(FIXTURES / "train.rec", rec)
    if with_index:
        shutil.copy(FIXTURES / "train.idx", tmp_path / "train.idx")
    return rec


def train_offsets() -> list[int]:
    return read_index(FIXTURES / "train.idx")[1].tolist()


def inspect_text(capsys, rec: Path) -> tuple[int, list[str]]:
    code = main(["inspect", str(rec)])
    return code, capsys.readouterr().out.splitlines()


def test_truncated_file_fails_at_the_last_record(tmp_path, capsys):
    rec = copy_train(tmp_path, with_index=False)
    last = train_offsets()[-1]
    rec.write_bytes(rec.read_bytes()[: last + 100])
    code, lines = inspect_text(capsys, rec)
    assert code == 1
    assert "records: 799" in lines
    assert lines[-1].startswith(f"integrity: FAILED at byte {last}: truncated record")


def test_flipped_magic_byte_fails_at_that_record(tmp_path, capsys):
    rec = copy_train(tmp_path, with_index=False)
    middle = train_offsets()[400]
    data = bytearray(rec.read_bytes())
    data[middle] ^= 0xFF
    rec.write_bytes(bytes(data))
    code, lines = inspect_text(capsys, rec)
    assert code == 1
    assert "records: 400" in lines
    assert lines[-1].startswith(f"integrity: FAILED at byte {middle}: bad magic")


def test_index_entry_past_the_end_fails_with_its_offset(tmp_path, capsys):
    rec = copy_train(tmp_path, with_index=True)
    past_end = rec.stat().st_size + 100
    index = tmp_path / "train.idx"
    lines = index.read_text().splitlines()
    lines[4] = f"4\t{past_end}"
    index.write_text("\n".join(lines) + "\n")
    code, output = inspect_text(capsys, rec)
    assert code == 1
    assert output[-2] == f"index: FAILED at byte {past_end}: train.idx line 5 points past the end of the file ({rec.stat().st_size} bytes)"
    assert output[-1] == "integrity: ok"


def test_index_entry_inside_a_record_fails(tmp_path, capsys):
    rec = copy_train(tmp_path, with_index=True)
    inside = train_offsets()[10] + 8
    index = tmp_path / "train.idx"
    lines = index.read_text().splitlines()
    lines[10] = f"10\t{inside}"
    index.write_text("\n".join(lines) + "\n")
    code, output = inspect_text(capsys, rec)
    assert code == 1
    assert output[-2] == f"index: FAILED at byte {inside}: train.idx line 11 points at no record start"


def test_index_listing_a_record_twice_fails(tmp_path, capsys):
    rec = copy_train(tmp_path, with_index=True)
    index = tmp_path / "train.idx"
    lines = index.read_text().splitlines()
    lines[10] = f"10\t{train_offsets()[3]}"  # as many entries as records, each at a record start
    index.write_text("\n".join(lines) + "\n")
    code, output = inspect_text(capsys, rec)
    assert code == 1
    assert output[-2] == f"index: FAILED at byte {train_offsets()[3]}: train.idx line 11 points at the same record as line 4"


def test_image_flags_non_image_payloads(capsys):
    code, lines = inspect_text(capsys, FIXTURES / "raw.rec")
    assert code == 1
    assert lines[-1].startswith("integrity: FAILED at byte 0: ") and "--raw" in lines[-1]


def test_missing_file_exits_1_with_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.rec")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"flow inspect: error: {tmp_path / 'none.rec'}: no such file"]


@settings(max_examples=fuzz_examples(40), deadline=None)
@given(EDITS, INDEX_LINES, st.booleans())
def test_inspect_on_mutated_files_reports_never_raises(tmp_path_factory, edits, index_lines, as_json):
    """`flow inspect` over a damaged `.rec` and `.idx`: a report and exit 0 or 1, never a traceback."""
    rec = small_image_rec(tmp_path_factory.mktemp("fuzz"))
    rec.write_bytes(mutated(rec.read_bytes(), edits))
    index = rec.with_suffix(".idx")
    index.write_text(index.read_text() + "".join(line + "\n" for line in index_lines))
    error = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(error):
        code = main(["inspect", str(rec), *(["--json"] if as_json else [])])
    assert code in (0, 1) and "Traceback" not in error.getvalue()
