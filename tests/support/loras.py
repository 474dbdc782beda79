"""LoRA files written with numpy in sd-scripts' key layout and metadata, for the LoRA verifier's tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def lora(path: Path, rank: int = 4, alpha: float = 1.0, te: bool = True, conv_rank: int | None = None,
         meta: dict[str, str] | None = None, dtype: type = np.float32, nan: bool = False, step: int = 10) -> Path:
    """A LoRA in sd-scripts' key layout with its training metadata (ss_steps, ss_epoch, network settings)."""
    tensors = {}
    names = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_mid_block_attentions_0_proj_out"]
    names += ["lora_te_text_model_encoder_layers_0_mlp_fc1"] if te else []
    for name in names:
        tensors[f"{name}.lora_down.weight"] = np.full((rank, 8), 0.1, dtype=dtype)
        tensors[f"{name}.lora_up.weight"] = np.zeros((8, rank), dtype=dtype)
        tensors[f"{name}.alpha"] = np.array(alpha, dtype=dtype)
    if conv_rank:
        conv = "lora_unet_down_blocks_0_resnets_0_conv1"
        tensors[f"{conv}.lora_down.weight"] = np.zeros((conv_rank, 8, 3, 3), dtype=dtype)
        tensors[f"{conv}.lora_up.weight"] = np.zeros((8, conv_rank, 1, 1), dtype=dtype)
        tensors[f"{conv}.alpha"] = np.array(1.0, dtype=dtype)
    if nan:
        tensors[f"{names[0]}.lora_up.weight"][0, 0] = math.nan
    training = {"ss_steps": str(step), "ss_epoch": "1", "ss_network_module": "networks.lora",
                "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    save_file(tensors, str(path), metadata=training if meta is None else meta)
    return path
