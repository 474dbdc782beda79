"""The size of each part of a base model, from checkpoint headers alone: parameter counts per component, how
they are stored, and how many parameters a LoRA of rank 1 adds to each (the memory estimate's inputs).

Single-file layouts (the names sd-scripts' loaders read): SD1/SD2/SDXL keep the U-Net under
`model.diffusion_model.`, the VAE under `first_stage_model.` and the text encoders under `cond_stage_model.` or
`conditioner.embedders.N.`; a FLUX.1 file holds the transformer alone, its CLIP-L, T5-XXL and AE come from the
files --clip_l, --t5xxl and --ae name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lorasetup.engine.errors import CheckFailed
from lorasetup.sd.memory.estimate import Component
from lorasetup.sd.safetensors_header import DTYPE_BYTES, FLOAT_DTYPES, HeaderError, TensorInfo, read_header

PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "model.diffusion_model.", "te1": "cond_stage_model.transformer.", "vae": "first_stage_model."},
    "sd2": {"unet": "model.diffusion_model.", "te1": "cond_stage_model.model.", "vae": "first_stage_model."},
    "sdxl": {"unet": "model.diffusion_model.", "te1": "conditioner.embedders.0.transformer.",
             "te2": "conditioner.embedders.1.model.", "vae": "first_stage_model."},
}
# FLUX.1's separate files: argument -> component, and its size when the file is not at hand (CLIP-L's text
# model, T5-XXL's encoder as sd-scripts loads them, and the FLUX AE: transformers / flux_models.py configs):
# parameters and the LoRA size per rank (CLIP-L's, as counted from an SD1.5 checkpoint's text encoder).
FLUX_FILES = {"clip_l": ("te1", 123_060_480, 165_888), "t5xxl": ("te2", 4_762_310_656, 0),
              "ae": ("vae", 83_819_683, 0)}
# networks/lora.py wraps the Linear and 1x1 Conv2d children of Transformer2DModel (U-Net) and of CLIPAttention /
# CLIPMLP (text encoders); lora_flux.py those of DoubleStreamBlock / SingleStreamBlock.
UNET_LORA = re.compile(r"(transformer_blocks\.\d+\..*|\.proj_in|\.proj_out)\.weight$")
UNET_CONV3 = re.compile(r"(\.in_layers\.2|\.out_layers\.3|\.op|output_blocks\.\d+\.\d+\.conv)\.weight$")
CLIP_LORA = re.compile(r"(\.self_attn\.|\.mlp\.|\.attn\.out_proj\.)\w*\.?weight$")
FLUX_BLOCK = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.")


@dataclass(frozen=True)
class ModelParts:
    """The components of one base model and where their sizes came from."""

    family: str
    components: dict[str, Component]
    file_bytes: int
    notes: tuple[str, ...] = ()


def _io(info: TensorInfo) -> int:
    """in + out of a Linear (out, in) or 1x1 conv (out, in, 1, 1) weight; 0 for anything else."""
    shape = info.shape
    if len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1)):
        return shape[0] + shape[1]
    return 0


def _lora_io(name: str, info: TensorInfo, kind: str) -> int:
    if kind == "unet":
        return _io(info) if UNET_LORA.search(name) else 0
    if kind == "flux":
        return _io(info) if FLUX_BLOCK.search(name) and len(info.shape) == 2 else 0
    if name.endswith("attn.in_proj_weight") and len(info.shape) == 2:  # OpenCLIP's fused q/k/v: three Linears
        return 3 * 2 * info.shape[1]
    return _io(info) if CLIP_LORA.search(name) else 0


def _conv_io(name: str, info: TensorInfo) -> int:
    shape = info.shape
    if len(shape) == 4 and shape[2:] == (3, 3) and UNET_CONV3.search(name):
        return 9 * shape[1] + shape[0]
    return 0


def component(tensors: Mapping[str, TensorInfo], kind: str) -> Component:
    """Sum one component's tensors: parameters, stored bytes, LoRA sizes, and (FLUX) each block's parameters."""
    params = stored = lora = conv = 0
    blocks: dict[tuple[str, int], int] = {}
    for name, info in tensors.items():
        if info.dtype not in FLOAT_DTYPES:
            continue
        count = math.prod(info.shape)
        params += count
        stored += count * DTYPE_BYTES[info.dtype]
        lora += _lora_io(name, info, kind)
        conv += _conv_io(name, info) if kind == "unet" else 0
        block = FLUX_BLOCK.search(name) if kind == "flux" else None
        if block:
            key = (block.group(1), int(block.group(2)))
            blocks[key] = blocks.get(key, 0) + count
    ordered = [blocks[k] for k in sorted(blocks, key=lambda k: (k[0] != "double_blocks", k[1]))]
    return Component(params, stored / params if params else 2.0, lora, conv, tuple(ordered))


def split(tensors: Mapping[str, TensorInfo], family: str) -> dict[str, dict[str, TensorInfo]]:
    """The checkpoint's tensors by component, by the family's name prefixes."""
    out: dict[str, dict[str, TensorInfo]] = {name: {} for name in PREFIXES[family]}
    for name, info in tensors.items():
        for part, prefix in PREFIXES[family].items():
            if name.startswith(prefix):
                out[part][name] = info
                break
    return out


def _flux_file(path: Path | None, kind: str, params: int, lora_io: int) -> tuple[Component, str | None]:
    """A FLUX text encoder or AE from its own file's header, else its known size (with a note saying so)."""
    usual = Component(params, 2.0, lora_io, assumed=True)
    if path is None:
        return usual, None
    try:
        header = read_header(path)
    except (OSError, HeaderError, CheckFailed) as exc:
        return usual, f"{path.name}: {exc}; counted at its usual size"
    return component(header.tensors, kind), None


def model_parts(tensors: Mapping[str, TensorInfo], family: str, file_bytes: int,
                flux_files: Mapping[str, Path | None] | None = None) -> ModelParts:
    """The components of a single-file checkpoint of `family` (sd1, sd2, sdxl, flux). Raises KeyError for a
    family the estimate does not model."""
    if family == "flux":
        parts = {"transformer": component(tensors, "flux")}
        notes = []
        for arg, (name, params, lora_io) in FLUX_FILES.items():
            path = (flux_files or {}).get(arg)
            parts[name], note = _flux_file(path, "clip" if name != "vae" else "vae", params, lora_io)
            notes += [note] if note else ([] if path else [f"--{arg} not set: {name} counted at its usual size"])
        return ModelParts(family, parts, file_bytes, tuple(notes))
    grouped = split(tensors, family)
    parts = {name: component(group, "unet" if name == "unet" else "clip") for name, group in grouped.items()}
    missing = tuple(f"no {name} tensors under {PREFIXES[family][name]}" for name, p in parts.items() if not p.params)
    return ModelParts(family, parts, file_bytes, missing)
