"""The known ways an sd-scripts run dies (reference/failure-modes.md), by the words of its error line: each with
its id and what to do. The smoke gate and the long run's summary name the mode of a crash with this table."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FailureMode:
    """One row of reference/failure-modes.md: how its error line reads and what to do."""

    id: str
    pattern: re.Pattern[str]
    hint: str


def _mode(mode_id: str, pattern: str, hint: str) -> FailureMode:
    return FailureMode(mode_id, re.compile(pattern, re.IGNORECASE), hint)


# First match wins: specific messages before generic ones.
CATALOG = (
    _mode("G2", r"out of memory|OutOfMemoryError",
          "the GPU ran out of memory at this batch size and resolution: lower train_batch_size or the "
          "resolution, add --gradient_checkpointing and --cache_latents"),
    _mode("G3", r"died with <Signals\.SIGKILL|^Killed$",
          "the system killed the run, most likely out of RAM: close other programs, add --cache_latents "
          "and --lowram, or add swap"),
    _mode("G4", r"No space left on device", "the disk is full: free space under output_dir and the temp folder"),
    _mode("E2", r"HeaderTooLarge|MetadataIncompleteBuffer|InvalidHeaderDeserialization",
          "the model file is truncated or a git-lfs pointer: see lorasetup doctor --only model.file"),
    _mode("E3", r"Can't load tokenizer",
          "the tokenizer could not be loaded (offline?): see lorasetup doctor --only model.tokenizer"),
    _mode("E4", r"NaN detected in latents", "the SDXL VAE overflows in fp16: add --no_half_vae"),
    _mode("E1", r"Missing key\(s\) in state_dict|Unexpected key\(s\) in state_dict|size mismatch for|"
                r"'NoneType' object has no attribute 'dtype'",
          "the model family does not fit the script: see lorasetup doctor --only model.family"),
    _mode("B3", r"bitsandbytes|libcudart|compiled without GPU support",
          "the 8-bit optimizer needs a working bitsandbytes (there is none on Macs or CPUs): "
          "--optimizer_type=AdamW"),
    _mode("B8", r"xFormers|memory_efficient_attention", "xformers does not work here: use --sdpa instead of "
                                                        "--xformers"),
    _mode("C2", r"bf16 mixed precision requires", "this device cannot do bf16: --mixed_precision=fp16 on a GPU, "
                                                  "else --mixed_precision=no"),
    _mode("C3", r"fp16 mixed precision requires a GPU",
          "fp16 needs a CUDA GPU (or accelerate >= 1.11 on MPS): --mixed_precision=no"),
    _mode("C7", r"Torch not compiled with CUDA enabled",
          "CUDA-only code ran on a machine without CUDA (sampling or validation on MPS): remove the sample_* "
          "and validation_split options"),
    _mode("C5", r"NCCL|gpu_ids", "the multi-GPU settings do not fit this machine: num_processes: 1 in the "
                                 "accelerate config (see lorasetup doctor --only device.accelerate)"),
    _mode("A2", r"No module named 'library'",
          "sd-scripts itself is not installed in the venv: pip install --no-deps -e <sd-scripts folder>"),
    _mode("B4", r"cannot import name 'cached_download'",
          "huggingface_hub is too new for this diffusers: lorasetup bootstrap --fix reinstalls the pins"),
    _mode("B5", r"unexpected keyword argument 'logging_dir'",
          "accelerate does not match the code: lorasetup bootstrap --fix reinstalls the pins"),
    _mode("B6", r"compiled using NumPy 1\.x|_ARRAY_API not found",
          "NumPy 2 with modules built for NumPy 1: lorasetup bootstrap --fix reinstalls the pins"),
    _mode("imports", r"No module named '[\w.]+'",
          "a module the run imports is missing: lorasetup doctor --only deps.imports, then lorasetup bootstrap --fix"),
    _mode("A3", r"unrecognized arguments", "an option this sd-scripts checkout does not have: "
                                           "lorasetup doctor --only args.known"),
    _mode("D1", r"No data found", "sd-scripts found no images: with train_data_dir its subfolders must be "
                                  "named <repeats>_<name> (e.g. 10_mychar); see lorasetup doctor --only dataset"),
    _mode("D3", r"extra keys not allowed|Invalid user config|required key not provided|expected \w+ for "
                r"dictionary value", "the dataset config fails sd-scripts' schema: lorasetup doctor --only "
                                     "dataset.schema"),
    _mode("D5", r"bucket_reso_steps|resolution is required",
          "bucket settings: lorasetup doctor --only dataset.schema args.rules"),
    _mode("D6", r"Unrecognized data stream|cannot identify image file|image file is truncated",
          "a damaged or mislabelled image: lorasetup doctor --only dataset.images"),
    _mode("F1-F4", r"when caching|cannot be trained with caching|full_fp16 requires|full_bf16 requires|"
                   r"fp8_base requires|adaptive_noise_scale requires|min_bucket_reso must be",
          "an argument combination sd-scripts refuses: lorasetup doctor --only args.rules"),
    _mode("F5", r"not enough values to unpack",
          "a network_args / optimizer_args / lr_scheduler_args entry is not key=value"),
    _mode("F7", r"Permission denied", "a folder the run writes to is not writable: lorasetup doctor --only "
                                      "args.output"),
    _mode("resolution", r"'int' object has no attribute 'split'",
          "resolution = 512 in the training config must be a string: resolution = \"512,512\""),
)


def explain(error_line: str | None, tail: list[str]) -> FailureMode | None:
    """The known failure mode of the error line, else of the last lines of output."""
    for line in ([error_line] if error_line else []) + list(reversed(tail)):
        for mode in CATALOG:
            if mode.pattern.search(line):
                return mode
    return None
