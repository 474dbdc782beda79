"""Facts that sd-scripts hard-codes, in one place, each naming the sd-scripts file it comes from.

Everything else is read from the checkout itself (requirement pins, argparse options, entry scripts).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from lorasetup.engine import files

# Import name -> distribution name, where they differ (sd-scripts requirements.txt and its optional
# imports). A module that neither a requirement file pins nor this table knows is never guessed.
MODULE_TO_DIST: dict[str, str] = {
    "cv2": "opencv-python",
    "PIL": "Pillow",
    "prodigyplus": "prodigy-plus-schedule-free",
    "lion_pytorch": "lion-pytorch",
    "huggingface_hub": "huggingface-hub",
    "pytorch_optimizer": "pytorch-optimizer",
    "lycoris": "lycoris-lora",
    "yaml": "PyYAML",
    "google.protobuf": "protobuf",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "pillow_avif": "pillow-avif-plugin",
    "pillow_jxl": "pillow-jxl-plugin",
    "open_clip": "open-clip-torch",
}


def optimizer_module(optimizer_type: str) -> str | None:
    """The top-level module an `--optimizer_type` needs (library/train_util.py get_optimizer).

    None means plain torch. Dotted names (`pytorch_optimizer.CAME`) name their module.
    """
    name = (optimizer_type or "").strip()
    lower = name.lower()
    if "." in name:
        return name.rsplit(".", 1)[0].split(".")[0]
    if lower.endswith("8bit") or lower.startswith("paged"):
        return "bitsandbytes"
    if lower == "lion":
        return "lion_pytorch"
    if lower.startswith("dadapt"):
        return "dadaptation"
    if lower == "prodigy":
        return "prodigyopt"
    if lower == "adafactor":
        return "transformers"
    if lower.endswith("schedulefree"):
        return "schedulefree"
    return None


def needs_bitsandbytes(optimizer_type: str) -> bool:
    """8-bit and paged optimizers need a working bitsandbytes build (none exists for MPS)."""
    return optimizer_module(optimizer_type) == "bitsandbytes"


def bucket_divisor(script_path: Path) -> int | None:
    """The divisor the entry script demands of bucket_reso_steps, read from its own uncommented
    `verify_bucket_reso_steps(N)` calls (64 in train_network.py, 32 in sdxl_train_network.py, ...).
    A trainer that also calls `super().assert_extra_args(...)` inherits its parent module's check too
    (flux_train_network.py: 32 and train_network.py's 64), so the result is the least common multiple.
    None when the script makes no such call."""
    try:
        code = "\n".join(line for line in files.read_source(script_path).splitlines()
                         if not line.lstrip().startswith("#"))
    except files.FileProblem:
        return None
    divisors = [int(n) for n in re.findall(r"verify_bucket_reso_steps\((\d+)\)", code)]
    parent = re.search(r"^class \w+\((\w+)\.\w+\)", code, re.MULTILINE)
    if parent and "super().assert_extra_args(" in code and parent.group(1) != script_path.stem:
        inherited = bucket_divisor(script_path.with_name(parent.group(1) + ".py"))
        divisors += [inherited] if inherited else []
    return math.lcm(*divisors) if divisors else None


# Image extensions sd-scripts picks up (library/train_util.py IMAGE_EXTENSIONS): lower and ALL-UPPER case.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(
    ext for base in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for ext in (base, base.upper()))
DEFAULT_CAPTION_EXTENSION = ".caption"  # library/config_util.py / train_util.py default

# Argparse defaults of the training-loop options (library/train_util.py add_training_arguments,
# add_sd_saving_arguments; train_network.py --save_model_as). The checkout's own defaults, read by
# lorasetup.sd.argspec, win; this table answers only when they cannot be read.
TRAINING_DEFAULTS: dict[str, Any] = {
    "max_train_steps": 1600, "max_train_epochs": None, "gradient_accumulation_steps": 1,
    "save_every_n_steps": None, "save_every_n_epochs": None, "save_n_epoch_ratio": None,
    "output_name": None, "save_model_as": "safetensors", "seed": None,
}
# What networks/lora.py create_network uses when the option is None (its argparse default).
NETWORK_DEFAULTS: dict[str, Any] = {"network_dim": 4, "network_alpha": 1.0}
# Checkpoint and state names (library/train_util.py STEP_FILE_NAME, EPOCH_FILE_NAME, get_last_ckpt_name,
# STEP_STATE_NAME, EPOCH_STATE_NAME, LAST_STATE_NAME; the default names when output_name is unset).
STEP_FILE = re.compile(r"-step(?P<step>\d{8})$")
EPOCH_FILE = re.compile(r"-(?P<epoch>\d{6})$")
STATE_DIR = re.compile(r"^(?P<name>.*?)(?:-step(?P<step>\d{8})|-(?P<epoch>\d{6}))?-state$")
DEFAULT_LAST_NAME = "last"
DEFAULT_SAVE_MODEL_AS = "safetensors"
