"""The training command: `accelerate launch` from the training venv (with `--config_file` when the Target names
an accelerate config, else accelerate's own lookup, exactly as a person's launch would), the entry script, and the
training arguments: the Target's files, then its extra sd-scripts arguments. The smoke run is that command with a
few overrides (`smoke_plan`); `lorasetup train` runs it without them (`real_command`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lorasetup.engine.files import read_toml
from lorasetup.engine.result import CheckFailed
from lorasetup.engine.target import Target
from lorasetup.engine.tomledit import toml_key, toml_value
from lorasetup.sd.trainargs import read_config

SMOKE_OUTPUT_NAME = "lorasetup-smoke"
# What the smoke run takes out of the command line and the training config (sd-scripts option names).
STEP_OPTIONS = {"max_train_steps", "max_train_epochs"}  # epochs would override --max_train_steps
OUTPUT_OPTIONS = {"output_dir", "output_name", "save_model_as", "logging_dir"}  # replaced by temp paths
SAVE_EVERY_OPTIONS = {"save_every_n_epochs", "save_every_n_steps", "save_n_epoch_ratio", "save_last_n_epochs",
                      "save_last_n_epochs_state", "save_last_n_steps", "save_last_n_steps_state", "save_state",
                      "save_state_on_train_end"}
SAMPLE_EVERY_OPTIONS = {"sample_every_n_steps", "sample_every_n_epochs", "sample_at_first"}
UPLOAD_OPTIONS = {"huggingface_repo_id", "save_state_to_huggingface"}  # a 5-step LoRA is never uploaded
SMOKE_DROPPED = STEP_OPTIONS | OUTPUT_OPTIONS | SAVE_EVERY_OPTIONS | SAMPLE_EVERY_OPTIONS | UPLOAD_OPTIONS


def launcher(target: Target) -> list[str]:
    """`accelerate launch` from the training venv (or `python -m accelerate.commands.launch` without the
    console script), with the Target's accelerate config when it names one, then its launch flags."""
    python = target.python_exe
    exe = python.parent / ("accelerate.exe" if os.name == "nt" else "accelerate")
    argv = [str(exe), "launch"] if exe.is_file() else [str(python), "-m", "accelerate.commands.launch"]
    if target.accelerate_config is not None:
        argv += ["--config_file", str(target.accelerate_config)]
    return argv + list(target.launch_args)


def script_args(target: Target) -> list[str]:
    """The Target's files as sd-scripts options, then its extra arguments (the command line wins in sd-scripts)."""
    args: list[str] = []
    for option, value in (("config_file", target.train_config), ("dataset_config", target.dataset_config),
                          ("pretrained_model_name_or_path", target.base_model), ("output_dir", target.output_dir)):
        if value is not None:
            args += [f"--{option}", str(value)]
    return args + list(target.train_args)


def real_command(target: Target) -> list[str]:
    """The command of the real run."""
    if target.sd_scripts is None:
        raise CheckFailed("no sd-scripts checkout: nothing to launch",
                          hint="pass --kohya-root or set kohya_root in lorasetup.toml")
    return [*launcher(target), str(target.sd_scripts / target.script), *script_args(target)]


def option_names(args: list[str]) -> list[str]:
    """The sd-scripts option names in a command line, underscored."""
    return [t[2:].split("=", 1)[0].replace("-", "_") for t in args if t.startswith("--") and len(t) > 2]


def strip_options(args: list[str], names: set[str]) -> list[str]:
    """`args` without the options in `names` and their values (`--x v`, `--x=v`, `--x v1 v2`, `--flag`)."""
    out: list[str] = []
    dropping = False
    for token in args:
        if token.startswith("--") and len(token) > 2:
            dropping = token[2:].split("=", 1)[0].replace("-", "_") in names
        if not dropping:
            out.append(token)
    return out


def config_keys(config: Path) -> list[str]:
    """The keys of a training config as sd-scripts sees them: sections flattened one level."""
    return [item.key for item in read_config(config)]


def config_without(config: Path, names: set[str], dest: Path) -> Path | None:
    """Write `config` minus the keys in `names` (top level and inside its sections, as sd-scripts flattens
    them) to `dest`; None when it has none of them. Everything else keeps its place and value."""
    flat = config_keys(config)
    if not names.intersection(flat):
        return None
    data = read_toml(config)
    lines = [f"# {config} for a lorasetup smoke run, without: {', '.join(sorted(names.intersection(flat)))}"]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and k not in names]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{toml_key(section)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if k not in names]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@dataclass
class SmokePlan:
    """The smoke command, the real command it derives from, and where the smoke run writes."""

    argv: list[str]
    real: list[str]
    temp: Path
    output: Path
    config_copy: Path | None = None
    dropped: list[str] = field(default_factory=list)


def smoke_plan(target: Target, config_file: Path | None, logging: bool, temp: Path, steps: int) -> SmokePlan:
    """The real command with `--max_train_steps=<steps>`, a fresh output dir and name under `temp`, a
    .safetensors output, and no save-every / sample-every / upload options (also taken out of a copy of the
    training config, since sd-scripts lets no command-line flag unset a config key)."""
    real = real_command(target)
    cut = len(launcher(target)) + 1
    args = strip_options(real[cut:], SMOKE_DROPPED)
    dropped = set(option_names(real[cut:])) & SMOKE_DROPPED
    copy = None
    if config_file is not None and config_file.is_file():
        copy = config_without(config_file, SMOKE_DROPPED, temp / f"smoke-{config_file.name}")
        if copy is not None:
            args = ["--config_file", str(copy), *strip_options(args, {"config_file"})]
            dropped |= set(config_keys(config_file)) & SMOKE_DROPPED
    output = temp / "output"
    overrides = [f"--max_train_steps={steps}", f"--output_dir={output}", f"--output_name={SMOKE_OUTPUT_NAME}",
                 "--save_model_as=safetensors"]
    if logging:
        overrides.append(f"--logging_dir={temp / 'logs'}")
    return SmokePlan([*real[:cut], *args, *overrides], real, temp, output / f"{SMOKE_OUTPUT_NAME}.safetensors",
                     copy, sorted(dropped))


def run_env() -> dict[str, str]:
    """The environment of both runs: the caller's, with unbuffered Python so prints interleave truly."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
