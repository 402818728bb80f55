"""MXNet's NDArray-list file (`nd.save`, `PREFIX-NNNN.params`): a reader and a small writer.

Little-endian throughout (MXNet 1.x, src/ndarray/ndarray.cc):

    uint64 0x112, uint64 0, uint64 N, then N arrays, then uint64 M names (uint64 length + bytes)
    array: uint32 magic (0xF993FAC8 V1, 0xF993FAC9 V2, 0xF993FACA V3)
           int32 stype (V2, V3 only; 0 dense)
           shape: int32 ndim, ndim x int64 (ndim 0 ends a V1/V2 record: an empty array; V3
                  writes numpy semantics, where ndim 0 is a scalar and -1 an unknown shape)
           int32 dev_type, int32 dev_id, int32 type_flag, then the data in C order.

Module.save_checkpoint names each array `arg:NAME` (a parameter) or `aux:NAME` (BatchNorm's
moving mean and variance). Sparse arrays (stype 1 row_sparse, 2 csr) and the pre-V1 layout are
refused. The reader checks every length against the bytes left before it allocates anything.
The writer exists for test fixtures and writes what MXNet 1.9.1 writes (dense, cpu(0)).
"""

from __future__ import annotations

import os
import struct

import numpy as np

from flow.errors import FlowError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
_VERSIONS = {V1_MAGIC: 1, V2_MAGIC: 2, V3_MAGIC: 3}
_MAGICS = {version: magic for magic, version in _VERSIONS.items()}

BFLOAT16_FLAG = 12
# mshadow's type flags; bfloat16 has no numpy dtype: its 16 bits are the top half of a float32.
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64,
          7: np.bool_, BFLOAT16_FLAG: np.uint16}
_FLAGS = {np.dtype(dtype): flag for flag, dtype in DTYPES.items() if flag != BFLOAT16_FLAG}
_STYPES = {1: "row_sparse", 2: "csr"}
_CPU = 1  # MXNet's dev_type for cpu


class MXNetParamsError(FlowError):
    """An MXNet `.params` (NDArray list) file that is truncated, not one, or holds what flow cannot read."""


def is_ndarray_list(path: str | os.PathLike) -> bool:
    """Whether `path` starts with the NDArray-list magic (flow's own `.params` are torch zip files)."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack("<Q", head)[0] == LIST_MAGIC


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.offset = memoryview(data), path, 0

    def fail(self, message: str, offset: int | None = None):
        raise MXNetParamsError(message, self.path, self.offset if offset is None else offset)

    def take(self, size: int, what: str) -> memoryview:
        if size > len(self.data) - self.offset:
            self.fail(f"truncated: {what} needs {size} bytes, {len(self.data) - self.offset} left")
        piece = self.data[self.offset:self.offset + size]
        self.offset += size
        return piece

    def unpack(self, layout: str, what: str):
        return struct.unpack(layout, self.take(struct.calcsize(layout), what))

    def count(self, what: str, item_size: int) -> int:
        """A uint64 count of items of at least `item_size` bytes each, checked against the bytes left."""
        start = self.offset
        (number,) = self.unpack("<Q", what)
        if number * item_size > len(self.data) - self.offset:
            self.fail(f"{what} {number} is more than the {len(self.data) - self.offset} bytes left can hold", start)
        return number

    def array(self, index: int) -> np.ndarray:
        start = self.offset
        (magic,) = self.unpack("<I", f"array {index}'s magic")
        version = _VERSIONS.get(magic)
        if version is None:
            self.fail(f"array {index}: magic 0x{magic:08X} is not an MXNet NDArray's (V1 0x{V1_MAGIC:08X}, "
                      f"V2 0x{V2_MAGIC:08X}, V3 0x{V3_MAGIC:08X})", start)
        if version >= 2:
            stype_at = self.offset
            (stype,) = self.unpack("<i", f"array {index}'s storage type")
            if stype != 0:
                kind = _STYPES.get(stype, f"stype {stype}")
                self.fail(f"array {index} is sparse ({kind}); flow reads dense arrays only "
                          f"(convert it with .tostype('default') in MXNet)", stype_at)
        shape_at = self.offset
        (ndim,) = self.unpack("<i", f"array {index}'s ndim")
        if ndim < 0 or (ndim == 0 and version < 3):
            self.fail(f"array {index} is empty (ndim {ndim}): it holds no values", shape_at)
        if ndim > 32:
            self.fail(f"array {index}: ndim {ndim} is not a shape", shape_at)
        shape = self.unpack(f"<{ndim}q", f"array {index}'s shape")
        if any(dim < 0 for dim in shape):
            self.fail(f"array {index}: shape {shape} has a negative dimension", shape_at)
        self.unpack("<ii", f"array {index}'s context")
        flag_at = self.offset
        (flag,) = self.unpack("<i", f"array {index}'s dtype")
        dtype = DTYPES.get(flag)
        if dtype is None:
            self.fail(f"array {index}: unknown dtype flag {flag}; known: "
                      f"{', '.join(f'{f} {_dtype_name(f)}' for f in DTYPES)}", flag_at)
        size = np.dtype(dtype).itemsize
        for dim in shape:  # the product in Python ints: a corrupt shape cannot overflow to a small size
            size *= dim
        values = np.frombuffer(self.take(size, f"array {index}'s {shape} {_dtype_name(flag)} values"), dtype).reshape(shape)
        if flag == BFLOAT16_FLAG:
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.copy()

    def name(self, index: int) -> str:
        start = self.offset
        length = self.count(f"name {index}'s length", 1)
        try:
            return bytes(self.take(length, f"name {index}")).decode()
        except UnicodeDecodeError:
            self.fail(f"name {index} is not UTF-8", start)


def _dtype_name(flag: int) -> str:
    return "bfloat16" if flag == BFLOAT16_FLAG else np.dtype(DTYPES[flag]).name


def read_ndarray_list(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named arrays of an `nd.save` file, in the file's order (bfloat16 comes back as float32)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise MXNetParamsError(f"cannot read: {error.strerror}", path) from None
    reader = _Reader(data, path)
    header, _reserved = reader.unpack("<QQ", "the header")
    if header != LIST_MAGIC:
        reader.fail(f"magic 0x{header:X} is not MXNet's NDArray-list magic 0x{LIST_MAGIC:X}: not an MXNet .params file", 0)
    arrays = [reader.array(index) for index in range(reader.count("array count", 4))]
    names_at = reader.offset
    names = [reader.name(index) for index in range(reader.count("name count", 8))]
    if len(names) != len(arrays):
        reader.fail(f"{len(arrays)} arrays but {len(names)} names; flow needs every array named", names_at)
    if len(set(names)) != len(names):
        reader.fail("a name appears twice", names_at)
    if reader.offset != len(data):
        reader.fail(f"{len(data) - reader.offset} bytes after the names")
    return dict(zip(names, arrays))


def ndarray_list_bytes(arrays: dict[str, np.ndarray], version: int = 2) -> bytes:
    """`arrays` as MXNet's `nd.save` writes them (version 2 is MXNet 1.x's default, 3 its numpy mode)."""
    if version not in _MAGICS:
        raise ValueError(f"version {version}: expected 1, 2 or 3")
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, array in arrays.items():
        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
        flag = _FLAGS.get(array.dtype)
        if flag is None:
            raise ValueError(f"{name}: dtype {array.dtype} has no MXNet type flag")
        if array.ndim == 0 and version < 3:
            raise ValueError(f"{name}: a 0-dimensional array needs version 3 (numpy shape semantics)")
        parts.append(struct.pack("<I", _MAGICS[version]))
        if version >= 2:
            parts.append(struct.pack("<i", 0))
        parts.append(struct.pack(f"<i{array.ndim}q", array.ndim, *array.shape))
        parts.append(struct.pack("<iii", _CPU, 0, flag))
        parts.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode()
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    return b"".join(parts)
