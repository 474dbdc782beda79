"""A base model's family from its names alone: the tensor names (and two shapes) of a single-file checkpoint,
or a diffusers folder's model_index.json and configs. No weights are read. Shared by the model gate (does
the family fit the script?) and the memory estimate (which components, how big)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lorasetup.engine.files import json_object

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL base", "sdxl-refiner": "SDXL refiner",
                 "flux": "FLUX.1", "sd3": "SD3", "lora": "a LoRA (not a base model)"}
# diffusers pipeline class (model_index.json `_class_name`) -> family
PIPELINE_FAMILY = {"StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl-refiner",
                   "FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}
# Tensor names of the original (single-file) layouts, in the order they are tested.
SD_UNET_ATTN_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SD_UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Family:
    name: str | None  # a FAMILY_LABELS key, or None when the names say nothing known
    evidence: str
    v_prediction: bool | None = None  # known only for diffusers folders
    in_channels: int | None = None


def classify(shapes: Mapping[str, tuple[int, ...]]) -> Family:
    """The model family from the tensor names (and two shapes) of a single-file checkpoint."""
    names = list(shapes)

    def has(fragment: str, prefix: bool = True) -> str | None:
        return next((n for n in names if (n.startswith(fragment) if prefix else fragment in n)), None)

    conv_in = shapes.get(SD_UNET_CONV_IN)
    channels = conv_in[1] if conv_in and len(conv_in) == 4 else None
    for fragment, family, prefix in (("lora_", "lora", True), (".lora_down.", "lora", False),
                                     ("conditioner.embedders.1.model.", "sdxl", True),
                                     ("conditioner.embedders.0.model.", "sdxl-refiner", True),
                                     ("double_blocks.", "flux", False), ("joint_blocks.", "sd3", False),
                                     ("cond_stage_model.model.", "sd2", True),
                                     ("cond_stage_model.transformer.", "sd1", True)):
        found = has(fragment, prefix)
        if found:
            return Family(family, found, in_channels=channels)
    attn_k = shapes.get(SD_UNET_ATTN_K)
    if attn_k and len(attn_k) == 2 and attn_k[1] in (768, 1024):  # cross-attention width: CLIP-L 768, OpenCLIP-H 1024
        return Family("sd1" if attn_k[1] == 768 else "sd2", f"{SD_UNET_ATTN_K} {list(attn_k)} (U-Net only)",
                      in_channels=channels)
    return Family(None, f"{len(names)} tensors, none with a known family prefix")


def classify_folder(path: Path) -> Family:
    """The family of a diffusers folder from model_index.json and the component configs."""
    index = json_object(path / "model_index.json") or {}
    cls = str(index.get("_class_name", ""))
    scheduler = json_object(path / "scheduler" / "scheduler_config.json") or {}
    v_pred = scheduler.get("prediction_type") == "v_prediction" if scheduler else None
    unet = json_object(path / "unet" / "config.json") or {}
    channels = unet.get("in_channels") if isinstance(unet.get("in_channels"), int) else None
    if cls in PIPELINE_FAMILY:
        return Family(PIPELINE_FAMILY[cls], f"model_index.json _class_name {cls}", v_pred, channels)
    width = unet.get("cross_attention_dim")
    if cls.startswith("StableDiffusion") and width in (768, 1024):
        return Family("sd1" if width == 768 else "sd2", f"{cls}, unet cross_attention_dim {width}", v_pred, channels)
    return Family(None, f"model_index.json _class_name {cls or '?'}")
