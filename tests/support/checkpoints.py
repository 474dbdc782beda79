"""SPARSE checkpoints for the memory tests: a real recorded header (tests/data/memory/*.header.json.gz: SD1.5
read from a real single-file checkpoint, SDXL and FLUX.1-dev as sd-scripts' own classes name their tensors)
and holes where the weights would be. Nothing but the header is ever read."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path
from typing import Any

from lorasetup.sd.safetensors_header import DTYPE_BYTES, TensorInfo

HEADERS = Path(__file__).parents[1] / "data" / "memory"


def header(name: str) -> dict[str, Any]:
    with gzip.open(HEADERS / f"{name}.header.json.gz", "rt") as fh:
        return json.load(fh)


def tensors(name: str) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, v["dtype"], tuple(v["shape"]), 0, 0) for k, v in header(name).items()}


def sparse_checkpoint(path: Path, name: str) -> Path:
    """A .safetensors file with the recorded header and holes where the weights would be."""
    entries, offset = {}, 0
    for key, value in header(name).items():
        size = DTYPE_BYTES[value["dtype"]] * math.prod(value["shape"])
        entries[key] = {**value, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(entries).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path
