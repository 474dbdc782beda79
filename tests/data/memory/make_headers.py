"""Write the safetensors headers (tensor names, dtypes, shapes; no weights) of an SDXL base and a FLUX.1-dev
checkpoint, as sd-scripts' own model classes name them, for tests/device/test_memory.py.

Not run by the tests. Needs an sd-scripts checkout and its venv (torch, transformers, diffusers):

    cd <sd-scripts> && <venv>/bin/python <this file> <out dir>

The models are built on torch's meta device, so nothing is allocated. The SD1.5 header beside them was read from
a real single-file SD1.5 checkpoint written by sd-scripts' model_util (random weights, same names and shapes).
"""

import gzip
import json
import sys
from pathlib import Path

import torch
from library import flux_models, model_util, sdxl_model_util, sdxl_original_unet
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def entries(state_dict, prefix, dtype="F16"):
    return {prefix + k: {"dtype": dtype, "shape": list(v.shape)} for k, v in state_dict.items()}


def sdxl() -> dict:
    with torch.device("meta"):
        unet = sdxl_original_unet.SdxlUNet2DConditionModel()
        te1 = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                           num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                           hidden_act="quick_gelu"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                                                         num_hidden_layers=32, num_attention_heads=20,
                                                         max_position_embeddings=77, hidden_act="gelu",
                                                         projection_dim=1280))
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    te2_sd = sdxl_model_util.convert_text_encoder_2_state_dict_to_sdxl(te2.state_dict(), torch.ones(()))
    vae_sd = model_util.convert_vae_state_dict(vae.state_dict())
    out = entries(unet.state_dict(), "model.diffusion_model.")
    out.update(entries({k: v for k, v in te1.state_dict().items() if "position_ids" not in k},
                       "conditioner.embedders.0.transformer."))
    out.update(entries(te2_sd, "conditioner.embedders.1.model."))
    out.update(entries(vae_sd, "first_stage_model."))
    return out


def flux() -> dict:
    with torch.device("meta"):
        model = flux_models.Flux(flux_models.configs["dev"].params)
    return entries(model.state_dict(), "", "BF16")


def main() -> None:
    out = Path(sys.argv[1])
    for name, header in (("sdxl-base", sdxl()), ("flux1-dev", flux())):
        with gzip.open(out / f"{name}.header.json.gz", "wt") as fh:
            json.dump(header, fh)
        print(name, len(header), "tensors")


if __name__ == "__main__":
    main()
