"""The Target: everything about one training setup, and where each value came from.

Sources, lowest to highest priority: discovery, `lorasetup.toml` or `[tool.lorasetup]` in
`pyproject.toml` (searched from the working directory upward), `LORASETUP_<FIELD>`, command-line flags.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEVICES = ("auto", "mps", "cuda", "xpu", "cpu")
PATH_FIELDS = ("kohya_root", "python", "dataset_config", "train_config", "base_model", "output_dir",
               "accelerate_config")
DISCOVERY_DIRS = ("kohya_ss", "~/kohya_ss", "~/tools/kohya_ss")


class ConfigError(Exception):
    """Bad configuration: the CLI exits 2 with this message."""


class UnknownKey(ConfigError):
    """A key the config file does not know; `rename_to` is its one clear right name (for `bootstrap --fix`)."""

    def __init__(self, message: str, path: Path, table: tuple[str, ...], key: str, rename_to: str | None) -> None:
        super().__init__(message)
        self.path, self.table, self.key, self.rename_to = path, table, key, rename_to


@dataclass
class Target:
    """One training setup. Paths are absolute once loaded."""

    kohya_root: Path | None = None
    python: Path | None = None
    script: str = "train_network.py"
    dataset_config: Path | None = None
    train_config: Path | None = None
    train_args: list[str] = field(default_factory=list)
    base_model: Path | None = None
    output_dir: Path | None = None
    device: str = "auto"
    accelerate_config: Path | None = None
    launch_args: list[str] = field(default_factory=list)
    rendezvous_timeout: float = 60.0
    smoke_steps: int = 5
    smoke_timeout: float = 900.0
    deps_accept: list[str] = field(default_factory=list)  # pins deliberately not met: `[deps] accept = [...]`
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
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["layout"] = self.layout
        out["sd_scripts"] = str(self.sd_scripts) if self.sd_scripts else None
        return out


FIELD_NAMES = tuple(f.name for f in fields(Target) if f.name != "sources")
SECTIONS = {"smoke": {"steps": "smoke_steps", "timeout": "smoke_timeout"}, "deps": {"accept": "deps_accept"}}
SECTION_EXAMPLES = {"smoke": "[smoke] steps = 5, timeout = 900", "deps": '[deps] accept = ["accelerate>=1.11"]'}


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
        return path.read_text(errors="replace")
    except OSError:
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
        candidate = (cwd / Path(name).expanduser()).resolve()
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
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}. Fix the syntax at that line and column.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None


def _flatten_config(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map a config table to Target field names; unknown keys are a ConfigError with a did-you-mean."""
    known = set(FIELD_NAMES) | set(SECTIONS)
    base = _base_table(path)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise _unknown_key(path, base, key, sorted(known))
        if norm in SECTIONS:
            out.update(_flatten_section(path, norm, value))
        else:
            out[norm] = value
    return out


def _base_table(path: Path) -> tuple[str, ...]:
    """Where lorasetup's keys sit in the file: the top level, or [tool.lorasetup] in a pyproject.toml."""
    return ("tool", "lorasetup") if path.name == "pyproject.toml" else ()


def _flatten_section(path: Path, section: str, value: Any) -> dict[str, Any]:
    """A sub-table such as [smoke] or [deps], as Target field names."""
    keys = SECTIONS[section]
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: `{section}` must be a table like {SECTION_EXAMPLES[section]}")
    out: dict[str, Any] = {}
    for sub, subval in value.items():
        if sub not in keys:
            raise _unknown_key(path, (*_base_table(path), section), sub, list(keys), f"{section}.")
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
        if name in PATH_FIELDS:
            if value in (None, ""):
                return None
            path = Path(str(value)).expanduser()
            return (base / path).resolve() if not path.is_absolute() else path
        if name in ("train_args", "launch_args"):
            return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
        if name == "deps_accept":
            return _requirements(value)
        if name == "smoke_steps":
            steps = int(value)
            if steps < 1:
                raise ValueError("must be at least 1")
            return steps
        if name in ("smoke_timeout", "rendezvous_timeout"):
            seconds = float(value)
            if seconds <= 0:
                raise ValueError("must be a positive number of seconds")
            return seconds
        if name == "device":
            device = str(value).lower()
            if device not in DEVICES:
                raise ValueError(f"must be one of {', '.join(DEVICES)}")
            return device
        return str(value)
    except (TypeError, ValueError) as exc:
        shown = next((f"{sec}.{k}" for sec, keys in SECTIONS.items() for k, f in keys.items() if f == name), name)
        raise ConfigError(f"{origin}: bad value for `{shown}` ({value!r}): {exc}") from None


def _requirements(value: Any) -> list[str]:
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


def load_target(flags: Mapping[str, Any] | None = None, cwd: Path | None = None,
                environ: Mapping[str, str] | None = None, config: Path | None = None,
                settings: Mapping[str, Any] | None = None, search: bool = True) -> Target:
    """Build the Target from discovery, config file, environment and flags (rising priority).

    `settings` (pytest ini keys) rank with the config file: above it, below the environment. Without `search`
    only an explicit `config` is read, not a lorasetup.toml found from `cwd` upward."""
    cwd = (cwd or Path.cwd()).resolve()
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, value: Any, origin: str, base: Path) -> None:
        values[name] = _coerce(name, value, origin, base)
        sources[name] = origin

    config = config or (Path(environ["LORASETUP_CONFIG"]) if environ.get("LORASETUP_CONFIG") else None)
    if config is not None:
        config = (cwd / config).resolve()
        if not config.is_file():
            raise ConfigError(f"{config}: config file not found. Pass an existing lorasetup.toml to --config.")
        raw = _load_toml(config)
        found: tuple[Path, dict[str, Any]] | None = (config, raw.get("tool", {}).get("lorasetup", raw)
                                                     if config.name == "pyproject.toml" else raw)
    else:
        found = find_config_file(cwd) if search else None
    if found:
        path, raw = found
        for name, value in _flatten_config(path, raw).items():
            put(name, value, str(path), path.parent)
    for name, value in (settings or {}).items():
        if value not in (None, [], ""):
            put(name, value, "pytest ini", cwd)
    for name in FIELD_NAMES:
        env_value = environ.get(f"LORASETUP_{name.upper()}")
        if env_value not in (None, ""):
            put(name, env_value, f"LORASETUP_{name.upper()}", cwd)
    for name, value in (flags or {}).items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown target field `{name}`")
        if value not in (None, [], ""):
            put(name, value, "flag", cwd)

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
    return Target(**values, sources=sources)
