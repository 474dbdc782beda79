"""Read a .safetensors file's header without loading its weights, and say exactly what is wrong with it.

The format: an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape,
data_offsets relative to the end of the header; plus an optional `__metadata__` of strings), then the data.
The `safetensors` library only says "HeaderTooLarge" or "MetadataIncompleteBuffer" for a truncated
download, a git-lfs pointer or a renamed pickle; reading the header here names the cause. Tensor values
are read only on request, one tensor at a time (finite checks of a LoRA, its `alpha` values). Nothing is
ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lorasetup.engine.files import open_regular

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit (HeaderTooLarge above it)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
LFS_PREFIX = b"version https://git-lfs.github.com/spec/"
PICKLE_PROTOCOL_BYTE = 0x80  # pickle protocol >= 2 starts with PROTO (b"\x80")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format (a .ckpt renamed to .safetensors)

# One byte of the exponent field says "not finite" for these formats (a 256-entry lookup, used by translate):
# F16: the high byte's bits 0x7C all set; F8_E5M2: same layout; F8_E4M3 has no inf, NaN is S.1111.111.
_F16_HIGH = bytes(1 if (b & 0x7C) == 0x7C else 0 for b in range(256))
_F8_E4M3 = bytes(1 if (b & 0x7F) == 0x7F else 0 for b in range(256))


class HeaderError(Exception):
    """The file is not a readable safetensors file; `kind` is lfs-pointer, pickle, truncated or corrupt."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's place in the file: `start`/`end` are absolute byte offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class Header:
    path: Path
    file_size: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.tensors)


def sniff(head: bytes) -> str | None:
    """`lfs-pointer` or `pickle` when the first bytes of a file say so, else None."""
    if head.startswith(LFS_PREFIX):
        return "lfs-pointer"
    if head.startswith(ZIP_MAGIC) or (head[:1] == bytes([PICKLE_PROTOCOL_BYTE]) and head[1:2] in b"\x02\x03\x04\x05"):
        return "pickle"
    return None


def lfs_pointer_size(text: bytes) -> int | None:
    """The `size` line of a git-lfs pointer file: the real file's size in bytes."""
    for line in text.decode("utf-8", "replace").splitlines():
        if line.startswith("size "):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def read_header(path: Path) -> Header:
    """Parse and validate the header of `path`; raise HeaderError naming the problem."""
    with open_regular(path) as fh:  # a pipe or device by the model's name is reported, never read
        size = os.fstat(fh.fileno()).st_size
        length = _header_length(fh, size)
        fh.seek(8)
        raw = fh.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError("corrupt", f"the header is not valid JSON ({exc}): the file is damaged") from None
    if not isinstance(parsed, dict):
        raise HeaderError("corrupt", "the header is not a JSON object: the file is damaged")
    header = Header(path, size)
    for name, entry in parsed.items():
        if name == "__metadata__":
            if isinstance(entry, dict):
                header.metadata = {str(k): str(v) for k, v in entry.items()}
            continue
        header.tensors[name] = _tensor(name, entry, 8 + length, size)
    return header


def _header_length(fh: BinaryIO, size: int) -> int:
    """The header length the first 8 bytes promise, after telling an lfs pointer or a pickle by its start."""
    head = fh.read(8)
    kind = sniff(head + fh.read(56))
    if kind == "lfs-pointer":
        fh.seek(0)
        real = lfs_pointer_size(fh.read(1024))
        promised = f" of a {real / 1e9:.2f} GB file" if real else ""
        raise HeaderError(kind, f"a git-lfs pointer{promised}, not the model: the real file was never "
                                "downloaded (git lfs not installed when the repo was cloned)")
    if kind == "pickle":
        raise HeaderError(kind, "a PyTorch pickle (.ckpt/.pt) renamed to .safetensors, not a safetensors file")
    if len(head) < 8:
        raise HeaderError("truncated", f"only {size} bytes long: not a safetensors file")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise HeaderError("truncated" if length <= MAX_HEADER_BYTES else "corrupt",
                          f"the first 8 bytes promise a {length}-byte header but the file holds {size} bytes: "
                          "a truncated download or not a safetensors file")
    return int(length)


def _tensor(name: str, entry: Any, base: int, size: int) -> TensorInfo:
    """One header entry, checked against its dtype's size and the file's length."""
    try:
        dtype, shape, (begin, end) = (str(entry["dtype"]), tuple(int(d) for d in entry["shape"]),
                                      entry["data_offsets"])
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError):
        raise HeaderError("corrupt", f"tensor {name!r} has no valid dtype/shape/data_offsets") from None
    if base + end > size:
        raise HeaderError("truncated", f"tensor {name!r} ends at byte {base + end} but the file holds {size} bytes "
                                       f"({100 * size / (base + end):.0f}% of it): a truncated download")
    nbytes = DTYPE_BYTES.get(dtype)
    if begin < 0 or end < begin or (nbytes is not None and end - begin != nbytes * math.prod(shape)):
        raise HeaderError("corrupt", f"tensor {name!r}: offsets {begin}..{end} do not fit {dtype} {list(shape)}")
    return TensorInfo(name, dtype, shape, base + begin, base + end)


def _raw(path: Path, info: TensorInfo) -> bytes:
    with open_regular(path) as fh:
        fh.seek(info.start)
        return fh.read(info.end - info.start)


def _as_f32(data: bytes, dtype: str) -> array:
    """F32 data, or BF16 widened to F32 (BF16 is the upper half of an F32), as native floats."""
    if dtype == "BF16":
        wide = bytearray(2 * len(data))
        wide[2::4], wide[3::4] = data[0::2], data[1::2]
        data = bytes(wide)
    values = array("f", data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def nonfinite_count(path: Path, info: TensorInfo) -> int:
    """How many NaN or infinite values one tensor holds (0 for integer tensors)."""
    if info.dtype not in FLOAT_DTYPES:
        return 0
    data = _raw(path, info)
    if info.dtype in ("F16", "F8_E5M2"):
        high = data[1::2] if info.dtype == "F16" else data
        return len(high) - high.translate(_F16_HIGH).count(0)
    if info.dtype == "F8_E4M3":
        return len(data) - data.translate(_F8_E4M3).count(0)
    if info.dtype == "F64":
        values = array("d", data)
        if sys.byteorder == "big":
            values.byteswap()
    else:
        values = _as_f32(data, info.dtype)
    # A sum of finite F32 values cannot overflow a float64, so a finite sum means every value is finite.
    if info.dtype != "F64" and math.isfinite(sum(values)):
        return 0
    return sum(1 for v in values if not math.isfinite(v))


def tensor_values(path: Path, info: TensorInfo) -> list[float]:
    """The values of a small float tensor (an `alpha`), as Python floats."""
    data = _raw(path, info)
    if info.dtype == "F16":
        return list(struct.unpack(f"<{len(data) // 2}e", data))
    if info.dtype == "F64":
        return list(struct.unpack(f"<{len(data) // 8}d", data))
    if info.dtype in ("F32", "BF16"):
        return list(_as_f32(data, info.dtype))
    raise ValueError(f"{info.name}: cannot read {info.dtype} values")
