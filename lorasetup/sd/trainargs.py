"""The training arguments as sd-scripts will see them: `--config_file` TOML merged with extra arguments.

sd-scripts (train_util.read_config_from_file) flattens the TOML's sections one level and lets the command
line win. Every value remembers where it came from, so messages can name the file and the key or flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed


@dataclass(frozen=True)
class ArgValue:
    """One training argument: its value and its place (`config.toml [section] key` or `--flag`)."""

    name: str
    value: Any
    place: str


class TrainArgsError(CheckFailed):
    """The training config TOML cannot be read; the message names the file and the fix."""


@dataclass
class TrainArgs:
    """Merged training arguments, by sd-scripts option name (underscores, no dashes)."""

    values: dict[str, ArgValue] = field(default_factory=dict)
    config_file: Path | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[ArgValue]:
        return iter(self.values.values())

    def get(self, name: str, default: Any = None) -> Any:
        item = self.values.get(name)
        return default if item is None else item.value

    def place(self, name: str) -> str:
        item = self.values.get(name)
        return item.place if item else f"--{name}"

    def flag(self, name: str) -> bool:
        """True when a store_true option is on (`--flag`, or `flag = true` in the TOML)."""
        value = self.get(name, False)
        return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def parse_cli(args: list[str]) -> dict[str, Any]:
    """Parse sd-scripts style `--key value`, `--key=value`, `--flag`, `--key v1 v2` into a dict."""
    out: dict[str, Any] = {}
    key: str | None = None
    pending: list[str] = []

    def close() -> None:
        if key is not None:
            out[key] = True if not pending else pending[0] if len(pending) == 1 else list(pending)

    for token in args:
        if token.startswith("--") and len(token) > 2:
            close()
            name, eq, value = token[2:].partition("=")
            key, pending = name, ([value] if eq else [])  # argparse does not turn - into _ here
        elif key is not None:
            pending.append(token)
    close()
    return out


def load_train_args(config_file: Path | None, extra: list[str]) -> TrainArgs:
    """Read `--config_file` (if any) and overlay the extra command-line arguments."""
    result = TrainArgs()
    cli = parse_cli(extra)
    if "config_file" in cli and config_file is None:
        config_file = Path(str(cli.pop("config_file")))
    cli.pop("config_file", None)
    if config_file is not None:
        if config_file.suffix != ".toml":
            config_file = config_file.with_suffix(".toml")  # sd-scripts appends .toml when missing
        result.config_file = config_file
        data = read_train_config(config_file)
        for key, value in data.items():
            if isinstance(value, dict):  # sections are flattened one level, as sd-scripts does
                for sub, subval in value.items():
                    result.values[sub] = ArgValue(sub, subval, f"{config_file.name} [{key}] {sub}")
            else:
                result.values[key] = ArgValue(key, value, f"{config_file.name} {key}")
    for key, value in cli.items():
        result.values[key] = ArgValue(key, value, f"--{key}")
    return result


def read_train_config(config_file: Path) -> dict[str, Any]:
    """The `--config_file` TOML as data; TrainArgsError naming the file, what is wrong and what sd-scripts does
    (read_config_from_file: `os.path.exists`, then `open` + `toml.load`)."""
    try:
        return files.read_toml(config_file)
    except files.FileProblem as exc:
        if exc.kind == "missing" and not config_file.is_symlink():
            raise TrainArgsError(f"{config_file}: training config not found",
                                 hint="point --train-config (or --config_file after --) at an existing file") from None
        then = ("sd-scripts opens it at start and waits forever" if exc.file_kind == "a named pipe (FIFO)"
                else "sd-scripts stops at start on it")
        raise TrainArgsError(exc.summary, hint=f"{exc.hint}; {then}") from None


def train_args(ctx: Context) -> TrainArgs:
    """The run's merged training arguments, once per run (raises TrainArgsError for an unreadable config)."""
    return ctx.memo("train_args", lambda: load_train_args(ctx.target.train_config, ctx.target.train_args))


def path_setting(ctx: Context, field_name: str, arg: str) -> Path | None:
    """A path from the Target, else from the training arguments (e.g. base_model vs
    `pretrained_model_name_or_path`); relative paths resolve from the working directory, as in sd-scripts."""
    value = getattr(ctx.target, field_name)
    if value is not None:
        return value
    raw = train_args(ctx).get(arg)
    if not raw or not isinstance(raw, str):
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)
