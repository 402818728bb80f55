"""MXNet's NDArray-list `.params` format: the reader against MXNet's own files, the writer byte for
byte against them, and one clear error (file, byte offset) for each kind of bad input."""

import struct

import numpy as np
import pytest

from flow.mxnet_params import (MXNetParamsError, is_ndarray_list, ndarray_list_bytes, read_ndarray_list, V1_MAGIC,
                               V2_MAGIC)
from tests.fixtures import MXNET_FIXTURES

MODELS = MXNET_FIXTURES / "mxnet_models"


def expected_arrays():
    with np.load(MODELS / "arrays.npz") as saved:
        return {name: saved[name] for name in saved.files}


@pytest.mark.parametrize("version", [2, 3])
def test_reads_every_dtype_of_an_mxnet_made_file(version):
    expected = expected_arrays()
    scalar = expected.pop("scalar")
    if version == 3:  # 0-dimensional arrays exist only in MXNet's numpy-shape mode, where it saved one last
        expected["scalar"] = scalar
    arrays = read_ndarray_list(MODELS / f"arrays-v{version}.params")
    assert list(arrays) == list(expected)  # the file's order
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype and arrays[name].shape == array.shape, name
        np.testing.assert_array_equal(arrays[name], array)


@pytest.mark.parametrize("version", [2, 3])
def test_the_writer_gives_mxnets_bytes(version):
    arrays = read_ndarray_list(MODELS / f"arrays-v{version}.params")
    assert ndarray_list_bytes(arrays, version) == (MODELS / f"arrays-v{version}.params").read_bytes()


def test_the_writer_gives_mxnets_bytes_for_a_module_checkpoint():
    path = MODELS / "resnet-8-0003.params"
    arrays = read_ndarray_list(path)
    assert "aux:bn1_moving_var" in arrays and arrays["arg:conv0_weight"].shape == (16, 3, 3, 3)
    assert ndarray_list_bytes(arrays) == path.read_bytes()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_round_trip(tmp_path, version):
    arrays = {"arg:w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "aux:m": np.array([1, -2], np.int64),
              "arg:h": np.array([0.5, 1.5], np.float16), "arg:empty": np.zeros((0, 3), np.float32)}
    path = tmp_path / "x.params"
    path.write_bytes(ndarray_list_bytes(arrays, version))
    back = read_ndarray_list(path)
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
    assert is_ndarray_list(path)


def one_array_file(tmp_path, body: bytes, names=(b"arg:x",)):
    path = tmp_path / "bad.params"
    tail = struct.pack("<Q", len(names)) + b"".join(struct.pack("<Q", len(n)) + n for n in names)
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 1) + body + tail)
    return path


def dense(magic=V2_MAGIC, stype=0, shape=(2,), flag=0, data=b"\0" * 8) -> bytes:
    head = struct.pack("<I", magic) + (struct.pack("<i", stype) if magic != V1_MAGIC else b"")
    return head + struct.pack(f"<i{len(shape)}q", len(shape), *shape) + struct.pack("<iii", 1, 0, flag) + data


def error_of(path) -> str:
    with pytest.raises(MXNetParamsError) as raised:
        read_ndarray_list(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_bfloat16_reads_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # exact in bfloat16: the top 16 bits of a float32
    top_halves = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = one_array_file(tmp_path, dense(shape=(3,), flag=12, data=top_halves))
    np.testing.assert_array_equal(read_ndarray_list(path)["arg:x"], values)


def test_a_good_hand_made_file_reads(tmp_path):
    np.testing.assert_array_equal(read_ndarray_list(one_array_file(tmp_path, dense()))["arg:x"], [0.0, 0.0])


def test_wrong_list_magic(tmp_path):
    path = tmp_path / "torch.params"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert "at byte 0: magic 0x4034B50 is not MXNet's NDArray-list magic 0x112" in error_of(path)
    assert not is_ndarray_list(path)


def test_wrong_array_magic(tmp_path):
    assert "at byte 24: array 0: magic 0x12345678 is not an MXNet NDArray's" in error_of(
        one_array_file(tmp_path, dense(magic=0x12345678)))


def test_unknown_dtype(tmp_path):
    message = error_of(one_array_file(tmp_path, dense(flag=9)))
    assert "at byte 52: array 0: unknown dtype flag 9; known: 0 float32" in message


@pytest.mark.parametrize("stype, kind", [(1, "row_sparse"), (2, "csr")])
def test_sparse_arrays_are_refused(tmp_path, stype, kind):
    assert f"at byte 28: array 0 is sparse ({kind})" in error_of(one_array_file(tmp_path, dense(stype=stype)))


@pytest.mark.parametrize("cut", [3, 20, 30, 50, 60, 70])
def test_truncated_anywhere(tmp_path, cut):
    whole = one_array_file(tmp_path, dense()).read_bytes()
    path = tmp_path / "cut.params"
    path.write_bytes(whole[:cut])
    assert "truncated" in error_of(path)


def test_a_corrupt_length_allocates_nothing(tmp_path):
    huge = (1 << 40, 1 << 20)  # 2**60 float32 values: a MemoryError if anything tried to hold them
    message = error_of(one_array_file(tmp_path, dense(shape=huge)))
    assert "at byte 64: truncated: array 0's (1099511627776, 1048576) float32 values needs 4611686018427387904 bytes" \
        in message
    path = tmp_path / "count.params"
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 1 << 62))
    assert "at byte 16: array count 4611686018427387904 is more than the 0 bytes left can hold" in error_of(path)
    named = one_array_file(tmp_path, dense(), names=(b"arg:x",))
    data = bytearray(named.read_bytes())
    struct.pack_into("<Q", data, len(data) - 5 - 8, 1 << 61)  # the name's length
    named.write_bytes(bytes(data))
    assert "name 0's length 2305843009213693952 is more than the 5 bytes left" in error_of(named)


def test_names_must_match_arrays(tmp_path):
    assert "1 arrays but 2 names" in error_of(one_array_file(tmp_path, dense(), names=(b"arg:x", b"arg:y")))
    assert "1 arrays but 0 names" in error_of(one_array_file(tmp_path, dense(), names=()))


def test_bytes_after_the_names(tmp_path):
    path = one_array_file(tmp_path, dense())
    path.write_bytes(path.read_bytes() + b"junk")
    assert "4 bytes after the names" in error_of(path)


def test_an_empty_v2_array_is_refused(tmp_path):
    body = struct.pack("<Iii", V2_MAGIC, 0, 0)
    assert "at byte 32: array 0 is empty (ndim 0)" in error_of(one_array_file(tmp_path, body))


def test_a_missing_file(tmp_path):
    assert "cannot read: No such file or directory" in error_of(tmp_path / "none.params")
