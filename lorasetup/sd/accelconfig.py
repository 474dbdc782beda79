"""The accelerate config file: found and written exactly as accelerate does, and the effective precision.

Where `accelerate launch` reads its config (accelerate/commands/config/config_args.py, commands/launch.py):
`--config_file PATH` when given, else `default_config_file`, which is
`expanduser($HF_HOME or join($XDG_CACHE_HOME or "~/.cache", "huggingface"))/accelerate/default_config.yaml`,
computed when accelerate is imported. A missing default file is fine (launch then uses built-in defaults and
warns); a missing `--config_file` is an error. lorasetup's `--accelerate-config` stands for launch's
`--config_file`.

The file is parsed with `yaml.safe_load` (`json.load` when the name ends in `.json`); unknown keys are an
error ("had unknown keys"). `accelerate config default` (commands/config/default.py write_basic_config) writes
JSON text into `default_config.yaml` (JSON is YAML) and refuses to overwrite an existing file. `render()`
writes the same way: `json.dumps(..., indent=2, sort_keys=True)` of the keys it sets.

Which mixed precision a run really uses (the launch flag, the config file, sd-scripts' own argument):

1. `accelerate launch` picks its precision: the `--mixed_precision` launch flag, else the config file's
   `mixed_precision`, else "no" (launch.py `_validate_launch_command`), and exports it to the training process
   as `ACCELERATE_MIXED_PRECISION` (utils/launch.py `prepare_simple_launcher_cmd_env`). A launch flag of bf16
   on a device without bf16 makes launch itself exit before the script starts ("bf16 mixed precision requires
   PyTorch >= 1.10 and a supported device.").
2. sd-scripts always passes its own value: `Accelerator(mixed_precision=args.mixed_precision, ...)`
   (library/train_util.py `prepare_accelerator`), where `args.mixed_precision` is the command line's
   `--mixed_precision`, else the `--config_file` TOML's `mixed_precision`, else the argparse default "no".
3. `AcceleratorState` reads `ACCELERATE_MIXED_PRECISION` only when the argument is None (state.py), which
   sd-scripts never passes. So sd-scripts' own argument always wins, and the launch flag and the config file's
   precision never reach the run (except under DeepSpeed, whose own config decides).

So the effective precision is `effective_mixed_precision(train_args)`; a different value in the accelerate
config or launch flag is only worth a note.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup.engine.fileedit import guarded_write
from lorasetup.engine.target import Target
from lorasetup.sd.trainargs import TrainArgs

PRECISIONS = ("no", "fp16", "bf16")  # library/train_util.py: --mixed_precision choices


@dataclass(frozen=True)
class ConfigLocation:
    """The accelerate config file `accelerate launch` would read, and why that one."""

    path: Path
    origin: str
    explicit: bool

    @property
    def exists(self) -> bool:
        return self.path.is_file()


def default_config_file(environ: Mapping[str, str] | None = None) -> Path:
    """accelerate's `default_config_file` for this environment (commands/config/config_args.py).

    Mirrors `os.path.expanduser(os.environ.get("HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME",
    "~/.cache"), "huggingface")))` + `accelerate/default_config.yaml`, empty values included (a relative
    result is relative to the working directory, as for accelerate).
    """
    env = os.environ if environ is None else environ
    hf_home = env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    path = os.path.join(os.path.expanduser(hf_home), "accelerate", "default_config.yaml")
    return Path(os.path.abspath(path))


def find_config(target: Target, environ: Mapping[str, str] | None = None) -> ConfigLocation:
    """The config file for this target: `--accelerate-config`, else accelerate's default location."""
    if target.accelerate_config is not None:
        origin = target.sources.get("accelerate_config", "flag")
        return ConfigLocation(target.accelerate_config, f"--accelerate-config ({origin})", True)
    env = os.environ if environ is None else environ
    if "HF_HOME" in env:
        origin = "$HF_HOME"
    elif "XDG_CACHE_HOME" in env:
        origin = "$XDG_CACHE_HOME"
    else:
        origin = "accelerate's default (~/.cache/huggingface)"
    return ConfigLocation(default_config_file(env), origin, False)


def machine_config(device: str, num_gpus: int = 1) -> dict[str, Any]:
    """The config that matches the machine: one process on `device` (cuda: one GPU unless `num_gpus` > 1).

    Only keys every accelerate 1.x ClusterConfig knows; accelerate fills the rest with its defaults
    (config_args.py `process_config`). mixed_precision stays "no": sd-scripts passes its own anyway.
    """
    multi = device == "cuda" and num_gpus > 1
    return {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU" if multi else "NO",
        "mixed_precision": "no",
        "num_machines": 1,
        "num_processes": num_gpus if multi else 1,
        "use_cpu": device == "cpu",
    }


def render(values: Mapping[str, Any]) -> str:
    """The file text, as accelerate's own `to_json_file` writes it (what `accelerate config default` does)."""
    return json.dumps(dict(values), indent=2, sort_keys=True) + "\n"


def write_config(path: Path, values: Mapping[str, Any], seen: bytes | None) -> Path | None:
    """Write `values` to `path` through the guarded writer: refused when the file no longer holds `seen` (the
    bytes the check read; None: it did not exist), backed up, written atomically. Returns the backup, if any."""
    return guarded_write(path, seen, render(values).encode("utf-8"))


def effective_mixed_precision(train_args: TrainArgs) -> tuple[str, str]:
    """The precision sd-scripts passes to Accelerator (see the module docstring) and where it was set."""
    if "mixed_precision" in train_args:
        return str(train_args.get("mixed_precision")), train_args.place("mixed_precision")
    return "no", "sd-scripts' default (--mixed_precision not set)"
