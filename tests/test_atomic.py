import errno
import os
from pathlib import Path

import pytest

import flow.atomic
from flow.atomic import write_atomically
from flow.errors import FlowError


def test_writes_the_bytes_and_leaves_no_temporary_file(tmp_path):
    write_atomically(tmp_path / "a" / "b.bin", b"data")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"data" and os.listdir(tmp_path / "a") == ["b.bin"]


def test_a_read_only_file_system_is_one_line_and_the_old_file_stays(tmp_path, monkeypatch):
    (tmp_path / "b.bin").write_bytes(b"old")
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))

    def refuse(*args, **kwargs):
        raise read_only
    monkeypatch.setattr(flow.atomic, "open", refuse, raising=False)
    monkeypatch.setattr(Path, "unlink", refuse)  # as Linux does there, even for a file that is not there
    with pytest.raises(FlowError) as refused:
        write_atomically(tmp_path / "b.bin", b"new")
    assert str(refused.value) == f"{tmp_path / 'b.bin'}: cannot write: Read-only file system"
    monkeypatch.undo()
    assert (tmp_path / "b.bin").read_bytes() == b"old"


@pytest.mark.parametrize("under", ["file", "file/deeper"])
def test_a_regular_file_in_the_way_of_the_folder_is_one_line(tmp_path, under):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FlowError) as refused:
        write_atomically(tmp_path / under / "b.bin", b"new")
    assert str(refused.value) == (f"{tmp_path / under / 'b.bin'}: cannot write: {tmp_path / under} or a folder "
                                  f"above it is a regular file")
