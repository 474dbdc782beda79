"""The Target: everything about one training setup, and where each value came from.

Sources, lowest to highest priority: discovery, `lorasetup.toml` or `[tool.lorasetup]` in
`pyproject.toml` (searched from the working directory upward), `LORASETUP_<FIELD>`, command-line flags.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from lorasetup.engine.files import (
    FileProblem,
    read_source,
    read_toml,
    resolved,
    tomllib,  # noqa: F401 - re-exported: the gates import it from here
)

DEVICES = ("auto", "mps", "cuda", "xpu", "cpu")
DISCOVERY_DIRS = ("kohya_ss", "~/kohya_ss", "~/tools/kohya_ss")


class ConfigError(Exception):
    """Bad configuration: the CLI exits 2 with this message."""


class UnknownKey(ConfigError):
    """A key the config file does not know; `rename_to` is its one clear right name (for `bootstrap --fix`)."""

    def __init__(self, message: str, path: Path, table: tuple[str, ...], key: str, rename_to: str | None) -> None:
        super().__init__(message)
        self.path, self.table, self.key, self.rename_to = path, table, key, rename_to


def _path(value: Any, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return resolved(base / path) if not path.is_absolute() else path


def _args(value: Any, base: Path) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _steps(value: Any, base: Path) -> int:
    steps = int(value)
    if steps < 1:
        raise ValueError("must be at least 1")
    return steps


def _seconds(value: Any, base: Path) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise ValueError("must be a positive number of seconds")
    return seconds


def _device(value: Any, base: Path) -> str:
    device = str(value).lower()
    if device not in DEVICES:
        raise ValueError(f"must be one of {', '.join(DEVICES)}")
    return device


def _text(value: Any, base: Path) -> str:
    return str(value)


def _requirements(value: Any, base: Path) -> list[str]:
    """`[deps] accept`: requirement strings (`accelerate>=1.11`); a string is split like a shell line."""
    items = shlex.split(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError('must be a list of requirements like ["accelerate>=1.11"]')
    for item in items:
        try:
            Requirement(str(item))
        except InvalidRequirement as exc:
            raise ValueError(f"{item!r} is not a requirement like `accelerate>=1.11`: {exc}") from None
    return [str(item) for item in items]


@dataclass(frozen=True)
class Setting:
    """How one Target field is spelt everywhere: the CLI flag, the pytest option and ini key, the environment
    variable and the config key all come from this, so the front ends cannot drift apart."""

    name: str
    coerce: Callable[[Any, Path], Any]  # raw value, the folder relative paths resolve against -> field value
    help: str
    cli: bool = True  # a flag of every lorasetup command (`--kohya-root`); train_args come after `--` instead
    pytest: bool = True  # a pytest option (`--kohya-root`)
    table: str | None = None  # the config file's table holding it (`[smoke] steps`), besides the plain key
    example: str = ""  # a value as the config file spells it, for messages

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return f"LORASETUP_{self.name.upper()}"

    @property
    def ini(self) -> str:
        return f"lorasetup_{self.name}"

    @property
    def table_key(self) -> str | None:
        """The key inside `table`: `steps` for smoke_steps in [smoke]."""
        return self.name.removeprefix(f"{self.table}_") if self.table else None

    @property
    def config_key(self) -> str:
        """How the config file names it: `smoke.steps`, `device`."""
        return f"{self.table}.{self.table_key}" if self.table else self.name


def _setting(coerce: Callable[[Any, Path], Any], help_text: str, *, default: Any = None,
             default_factory: Callable[[], Any] | None = None, **how: Any) -> Any:
    """A Target field with its Setting (named when the class is built: see SETTINGS)."""
    meta = {"setting": Setting("", coerce, help_text, **how)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Target:
    """One training setup. Paths are absolute once loaded."""

    kohya_root: Path | None = _setting(
        _path, "kohya_ss GUI checkout (with sd-scripts/ inside) or a bare sd-scripts checkout")
    python: Path | None = _setting(
        _path, "the training interpreter (default: <root>/venv, <root>/.venv, else this Python)")
    script: str = _setting(_text, "entry script (default train_network.py)", default="train_network.py")
    dataset_config: Path | None = _setting(_path, "dataset TOML (sd-scripts --dataset_config)")
    train_config: Path | None = _setting(_path, "training-args TOML (sd-scripts --config_file)")
    train_args: list[str] = _setting(_args, "extra sd-scripts arguments, one shell-quoted string",
                                     default_factory=list, cli=False)
    base_model: Path | None = _setting(_path, "base model .safetensors or diffusers folder")
    output_dir: Path | None = _setting(_path, "where the real run writes its LoRA")
    device: str = _setting(_device, "expected device: auto, mps, cuda, xpu or cpu", default="auto")
    accelerate_config: Path | None = _setting(
        _path, "accelerate config file (default: accelerate's own lookup)")
    launch_args: list[str] = _setting(
        _args, "`accelerate launch` flags, e.g. '--multi_gpu --num_processes 2 --main_process_port 29501'",
        default_factory=list)
    rendezvous_timeout: float = _setting(
        _seconds, "seconds device.distributed waits for every process and machine to join (default 60)",
        default=60.0)
    smoke_steps: int = _setting(_steps, "smoke run: training steps (default 5)", default=5, cli=False,
                                table="smoke", example="5")
    smoke_timeout: float = _setting(_seconds, "smoke run: seconds before it is stopped (default 900)",
                                    default=900.0, cli=False, pytest=False, table="smoke", example="900")
    deps_accept: list[str] = _setting(_requirements, "pins deliberately not met, e.g. accelerate>=1.11",
                                      default_factory=list, cli=False, pytest=False, table="deps",
                                      example='["accelerate>=1.11"]')
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def layout(self) -> str | None:
        """`kohya_ss` (GUI checkout with an sd-scripts submodule), `sd-scripts`, or None."""
        return detect_layout(self.kohya_root) if self.kohya_root else None

    @property
    def sd_scripts(self) -> Path | None:
        """The sd-scripts tree: `<root>/sd-scripts` for a kohya_ss checkout, else the root itself."""
        if self.kohya_root is None:
            return None
        return self.kohya_root / "sd-scripts" if self.layout == "kohya_ss" else self.kohya_root

    @property
    def python_exe(self) -> Path:
        return self.python or Path(sys.executable)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        out["layout"] = self.layout
        out["sd_scripts"] = str(self.sd_scripts) if self.sd_scripts else None
        return out


# The one table of the Target's settings, in field order.
SETTINGS: tuple[Setting, ...] = tuple(replace(f.metadata["setting"], name=f.name)
                                      for f in fields(Target) if "setting" in f.metadata)
FIELD_NAMES = tuple(s.name for s in SETTINGS)
BY_NAME = {s.name: s for s in SETTINGS}
TABLES = {s.table: {t.table_key: t.name for t in SETTINGS if t.table == s.table}
          for s in SETTINGS if s.table}


def detect_layout(root: Path) -> str | None:
    """Tell a kohya_ss GUI checkout from a bare sd-scripts checkout by their marker files."""
    if (root / "kohya_gui").is_dir() or (root / "kohya_gui.py").is_file() \
            or "sd-scripts" in _read(root / ".gitmodules"):
        return "kohya_ss"
    if (root / "library" / "train_util.py").is_file() or (root / "train_network.py").is_file():
        return "sd-scripts"
    if (root / "sd-scripts").is_dir():
        return "kohya_ss"
    return None


def _read(path: Path) -> str:
    try:
        return read_source(path)
    except FileProblem:
        return ""


def discover_root(cwd: Path) -> Path | None:
    """The first kohya_ss or sd-scripts checkout at cwd or a parent, else in the usual places."""
    for candidate in (cwd, *cwd.parents):
        layout = detect_layout(candidate)
        if layout == "sd-scripts" and detect_layout(candidate.parent) == "kohya_ss":
            return candidate.parent  # inside a kohya_ss checkout's sd-scripts submodule
        if layout:
            return candidate
    for name in DISCOVERY_DIRS:
        candidate = resolved(cwd / Path(name).expanduser())
        if candidate.is_dir() and detect_layout(candidate):
            return candidate
    return None


def venv_python(root: Path) -> Path | None:
    """The interpreter of `<root>/venv` or `<root>/.venv`, if one exists."""
    for venv in ("venv", ".venv"):
        for rel in ("bin/python", "Scripts/python.exe"):
            exe = root / venv / rel
            if exe.exists():
                return exe
    return None


def find_config_file(cwd: Path) -> tuple[Path, dict[str, Any]] | None:
    """`lorasetup.toml`, or `pyproject.toml` with `[tool.lorasetup]`, from cwd upward."""
    for directory in (cwd, *cwd.parents):
        own = directory / "lorasetup.toml"
        if own.is_file():
            return own, _load_toml(own)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            section = _load_toml(pyproject).get("tool", {}).get("lorasetup")
            if section is not None:
                return pyproject, section
    return None


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path)
    except FileProblem as exc:
        raise ConfigError(f"{exc.summary}. {exc.hint}.") from None


def _flatten_config(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map a config table to Target field names; unknown keys are a ConfigError with a did-you-mean."""
    known = set(FIELD_NAMES) | set(TABLES)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise _unknown_key(path, _base_table(path), key, sorted(known))
        if norm in TABLES:
            out.update(_flatten_table(path, norm, value))
        else:
            out[norm] = value
    return out


def _base_table(path: Path) -> tuple[str, ...]:
    """Where lorasetup's keys sit in the file: the top level, or [tool.lorasetup] in a pyproject.toml."""
    return ("tool", "lorasetup") if path.name == "pyproject.toml" else ()


def _flatten_table(path: Path, table: str, value: Any) -> dict[str, Any]:
    """The fields of one config table (`[smoke] steps = 3` -> smoke_steps)."""
    keys = TABLES[table]
    if not isinstance(value, dict):
        example = ", ".join(f"{key} = {BY_NAME[name].example}" for key, name in keys.items())
        raise ConfigError(f"{path}: `{table}` must be a table like [{table}] {example}")
    out = {}
    for sub, subval in value.items():
        if sub not in keys:
            raise _unknown_key(path, (*_base_table(path), table), sub, [str(k) for k in keys], f"{table}.")
        out[keys[sub]] = subval
    return out


def _unknown_key(path: Path, table: tuple[str, ...], key: str, known: list[str], prefix: str = "") -> UnknownKey:
    close = difflib.get_close_matches(key, known, n=1)
    clear = difflib.get_close_matches(key, known, n=2, cutoff=0.8)
    rename_to = clear[0] if len(clear) == 1 else None
    suggestion = f" Did you mean `{prefix}{close[0]}`?" if close else ""
    repair = " `lorasetup bootstrap --fix --yes` renames it." if rename_to else ""
    message = (f"{path}: unknown key `{prefix}{key}`.{suggestion}{repair} Known keys: "
               f"{', '.join(prefix + k for k in known)}.")
    return UnknownKey(message, path, table, key, rename_to)


def _coerce(name: str, value: Any, origin: str, base: Path) -> Any:
    """Turn a raw value into the field's type; relative paths resolve against `base`."""
    try:
        return BY_NAME[name].coerce(value, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: bad value for `{BY_NAME[name].config_key}` ({value!r}): {exc}") from None


class _Values:
    """The field values found so far and where each came from; a later `put` wins."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def put(self, name: str, value: Any, origin: str, base: Path) -> None:
        self.values[name] = _coerce(name, value, origin, base)
        self.sources[name] = origin

    def put_given(self, given: Mapping[str, Any], origin: str, base: Path) -> None:
        """Every value that is set (None, "" and [] are not)."""
        for name, value in given.items():
            if value not in (None, [], ""):
                self.put(name, value, origin, base)


def _config_file(config: Path | None, cwd: Path, environ: Mapping[str, str], search: bool
                 ) -> tuple[Path, dict[str, Any]] | None:
    """The config file named by --config or LORASETUP_CONFIG, else (with `search`) the one found from cwd upward."""
    config = config or (Path(environ["LORASETUP_CONFIG"]) if environ.get("LORASETUP_CONFIG") else None)
    if config is None:
        return find_config_file(cwd) if search else None
    config = resolved(cwd / config)
    if not config.is_file():
        raise ConfigError(f"{config}: config file not found. Pass an existing lorasetup.toml to --config.")
    raw = _load_toml(config)
    return config, raw.get("tool", {}).get("lorasetup", raw) if config.name == "pyproject.toml" else raw


def _discover(found: _Values, cwd: Path) -> None:
    """The checkout and its interpreter where no source named them."""
    values, sources = found.values, found.sources
    if "kohya_root" not in values:
        root = discover_root(cwd)
        if root is not None:
            values["kohya_root"], sources["kohya_root"] = root, "discovered"
    root = values.get("kohya_root")
    if "python" not in values:
        found_python = venv_python(root) if root else None
        if found_python is None and root is not None and (root / "sd-scripts").is_dir():
            found_python = venv_python(root / "sd-scripts")
        values["python"] = found_python or Path(sys.executable)
        sources["python"] = "discovered" if found_python else "current interpreter"


def load_target(flags: Mapping[str, Any] | None = None, cwd: Path | None = None,
                environ: Mapping[str, str] | None = None, config: Path | None = None,
                settings: Mapping[str, Any] | None = None, search: bool = True) -> Target:
    """Build the Target from discovery, config file, environment and flags (rising priority).

    `settings` (pytest ini keys) rank with the config file: above it, below the environment. Without `search`
    only an explicit `config` is read, not a lorasetup.toml found from `cwd` upward."""
    cwd = (cwd or Path.cwd()).resolve()
    environ = os.environ if environ is None else environ
    found = _Values()
    config_file = _config_file(config, cwd, environ, search)
    if config_file:
        path, raw = config_file
        for name, value in _flatten_config(path, raw).items():
            found.put(name, value, str(path), path.parent)
    found.put_given(settings or {}, "pytest ini", cwd)
    for setting in SETTINGS:
        env_value = environ.get(setting.env)
        if env_value not in (None, ""):
            found.put(setting.name, env_value, setting.env, cwd)
    unknown = [name for name in flags or {} if name not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown target field `{unknown[0]}`")
    found.put_given(flags or {}, "flag", cwd)
    _discover(found, cwd)
    return Target(**found.values, sources=found.sources)
