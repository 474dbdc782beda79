"""The training arguments as sd-scripts will see them: the one model every gate reads.

sd-scripts builds its namespace in two steps (train_network.py `__main__`, library/train_util.py
read_config_from_file): argparse parses the command line; with `--config_file`, the TOML's sections are flattened
one level into an `argparse.Namespace` and the command line is parsed again over it
(`parser.parse_args(namespace=config_args)`). So a command-line value beats the TOML, a TOML value beats the
argparse default, and a TOML value stays exactly as TOML typed it: never converted, never checked against the
option's type or choices. `v2 = "false"` is the non-empty string "false", and sd-scripts' `if args.v2:` is true.

Every value keeps its place (`train.toml [model] v2`, `--v2`, `lorasetup.toml train_args --v2`, `v2 (default)`)
and its source (`toml`, `cli`, `default`); `TrainArgs.on(name)` is sd-scripts' own test. Defaults come from the
checkout's argparse code (lorasetup.sd.argspec) when it can be read.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed
from lorasetup.engine.target import Target, tomllib
from lorasetup.sd.argspec import ArgSpec, Option, load_argspec

FILE_ORIGINS = ("lorasetup.toml", "pyproject.toml")
AFTER_DASHES = "the command line (after --)"


@dataclass(frozen=True)
class Setting:
    """One resolved value, where it is set and how it got there. Training arguments: source `toml`, `cli` or
    `default`; the dataset layers (lorasetup.sd.dataset.scan) add `subset`, `dataset`, `general`, `args`,
    `folder`."""

    value: Any
    place: str
    source: str

    @property
    def on(self) -> bool:
        """sd-scripts' test: `if args.x:`."""
        return bool(self.value)


@dataclass(frozen=True)
class TomlItem:
    """One key of the `--config_file` TOML, sections flattened one level as sd-scripts does; `table` is its
    section (`()` at the top level)."""

    key: str
    value: Any
    place: str
    table: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArgsOrigin:
    """Where a run of command-line tokens comes from: `lorasetup.toml`'s `train_args` (or `[tool.lorasetup]`
    in a pyproject.toml), which a fix can edit, or the command line after `--`, which it cannot."""

    label: str
    tokens: tuple[str, ...]
    file: Path | None = None
    table: tuple[str, ...] = ()
    seen: bytes | None = None  # the file's bytes when the tokens were read from it


@dataclass(frozen=True)
class CliFlag:
    """One option as typed: `--network_dim 16`, `--flip_aug`, `--network_args a=1 b=2`; `index` is the flag
    token's position in the whole token list."""

    token: str
    name: str
    values: tuple[str, ...]
    inline: bool  # `--name=value`
    index: int = 0
    origin: ArgsOrigin | None = None

    @property
    def tokens(self) -> list[str]:
        return [self.token] if self.inline else [self.token, *self.values]

    @property
    def place(self) -> str:
        """`--mixed_precision`, or `lorasetup.toml train_args --mixed_precision` for a token from that file."""
        return self._where(self.name)

    @property
    def typed(self) -> str:
        """The place with the token as typed (`--mixed_precision=fp16`)."""
        return self._where(self.token)

    def _where(self, text: str) -> str:
        if self.origin is not None and self.origin.file is not None:
            return f"{self.origin.label} {text}"
        return text


class TrainArgsError(CheckFailed):
    """The training config TOML cannot be read; the message names the file and the fix."""


@dataclass
class TrainArgs:
    """The namespace sd-scripts ends up with (option dest -> Setting), with the TOML keys and command-line flags
    it was built from. `x in args` means the person set x (TOML or command line); `get` includes defaults."""

    values: dict[str, Setting] = field(default_factory=dict)
    toml: list[TomlItem] = field(default_factory=list)
    cli: list[CliFlag] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # tokens before the first flag
    config_file: Path | None = None
    spec: ArgSpec | None = None
    origins: list[ArgsOrigin] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return self.given(name)

    def setting(self, name: str) -> Setting | None:
        return self.values.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        found = self.values.get(name)
        return default if found is None or found.value is None else found.value

    def given(self, name: str) -> bool:
        found = self.values.get(name)
        return found is not None and found.source != "default"

    def place(self, name: str) -> str:
        found = self.values.get(name)
        return found.place if found is not None and found.source != "default" else f"{name} (default)"

    def on(self, name: str) -> bool:
        """Truthiness exactly as sd-scripts tests it (`if args.name:`), whatever the value's type."""
        return bool(self.get(name))

    def flag_of(self, name: str) -> CliFlag | None:
        """The command-line flag that set `name` (the last one, as argparse keeps it)."""
        for flag in reversed(self.cli):
            if self._dest(flag) == name:
                return flag
        return None

    def item_of(self, name: str) -> TomlItem | None:
        """The TOML key that set `name` (the last one of the flattened sections)."""
        return next((item for item in reversed(self.toml) if item.key == name), None)

    def _dest(self, flag: CliFlag) -> str | None:
        if self.spec is None:
            return flag.name[2:] if flag.name.startswith("--") else None
        matches = self.spec.match_flag(flag.name)
        return matches[0].dest if len(matches) == 1 else None


# --- reading -------------------------------------------------------------------------------------------

NUMBER_LIKE = re.compile(r"^-\.?\d")


def scan_cli(tokens: Iterable[str], origins: list[ArgsOrigin] | None = None) -> tuple[list[CliFlag], list[str]]:
    """Split command-line tokens into flags with their values (and the tokens before the first flag), the way
    argparse groups them: a token starting with `-` opens an option unless it looks like a negative number."""
    tokens = list(tokens)
    owner = _owners(origins, len(tokens))
    flags: list[CliFlag] = []
    stray: list[str] = []
    for i, token in enumerate(tokens):
        if token.startswith("-") and len(token) > 1 and not NUMBER_LIKE.match(token):
            name, eq, value = token.partition("=")
            flags.append(CliFlag(token, name, (value,) if eq else (), bool(eq), i, owner[i]))
        elif not flags:
            stray.append(token)
        else:
            last = flags[-1]
            flags[-1] = CliFlag(last.token, last.name, (*last.values, token), last.inline, last.index, last.origin)
    return flags, stray


def _owners(origins: list[ArgsOrigin] | None, n: int) -> list[ArgsOrigin | None]:
    owner: list[ArgsOrigin | None] = []
    for origin in origins or []:
        owner += [origin] * len(origin.tokens)
    return (owner + [None] * n)[:n]


def flatten_config(data: Mapping[str, Any], name: str) -> list[TomlItem]:
    """train_util.read_config_from_file: a table's keys are lifted to the top level, later keys win."""
    items: list[TomlItem] = []
    for key, value in data.items():
        if isinstance(value, dict):
            items += [TomlItem(sub, subval, f"{name} [{key}] {sub}", (key,)) for sub, subval in value.items()]
        else:
            items.append(TomlItem(key, value, f"{name} {key}"))
    return items


def read_config(path: Path) -> list[TomlItem]:
    """The training TOML's keys in file order. TrainArgsError for a missing or broken file, naming the file, what
    is wrong and what sd-scripts does (read_config_from_file: `os.path.exists`, then `open` + `toml.load`)."""
    try:
        data = files.read_toml(path)
    except files.FileProblem as exc:
        if exc.kind == "missing" and not path.is_symlink():
            raise TrainArgsError(f"{path}: training config not found",
                                 hint="point --train-config (or --config_file after --) at an existing file") from None
        then = ("sd-scripts opens it at start and waits forever" if exc.file_kind == "a named pipe (FIFO)"
                else "sd-scripts stops at start on it")
        raise TrainArgsError(exc.summary, hint=f"{exc.hint}; {then}") from None
    return flatten_config(data, path.name)


def convert(opt: Option, text: str) -> Any:
    """What argparse's `type` makes of a command-line string; raises ValueError like argparse would. A custom
    `type=` callable is not run: its string is kept."""
    if opt.type == "int":
        return int(text)
    if opt.type == "float":
        return float(text)
    if opt.type == "bool":
        return bool(text)
    if opt.type == "path":
        return Path(text)
    return text


def cli_value(opt: Option, flag: CliFlag, current: Any) -> Any:
    """The namespace value argparse stores for `flag` (`current`: what the namespace held before)."""
    if opt.action == "store_true":
        return True
    if opt.action == "store_false":
        return False
    if opt.action == "count":
        return (current or 0) + 1
    if not opt.takes_value:
        return current
    try:
        converted = [convert(opt, v) for v in flag.values]
    except ValueError:
        converted = list(flag.values)
    if opt.action in ("append", "extend"):  # argparse adds to the list already in the namespace (even the TOML's)
        base = list(current) if isinstance(current, list) else []
        if opt.action == "extend":
            return base + converted
        return base + [converted if opt.nargs is not None else converted[0] if converted else None]
    if opt.is_list:
        return converted
    if opt.nargs == "?" and not converted:
        return None
    return converted[0] if converted else None


def _defaults(spec: ArgSpec) -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for opt in spec.options.values():
        if opt.default_src is not None:
            continue  # a default the source computes: unknown here, so not claimed
        default = opt.default
        if isinstance(default, str) and opt.takes_value and opt.type in ("int", "float", "path"):
            try:  # argparse runs `type` over a string default that nothing replaced
                default = convert(opt, default)
            except ValueError:
                pass
        out[opt.dest] = Setting(default, f"{opt.dest} (default)", "default")
    return out


def _config_file(flags: list[CliFlag], spec: ArgSpec | None, given: Path | None) -> Path | None:
    """`--config_file` as sd-scripts opens it: the last one on the command line wins over the Target's (which
    lorasetup puts first), an empty one means none (`if not args.config_file: return args`), and `.toml` is
    appended when missing."""
    raw = str(given) if given is not None else None
    for flag in reversed(flags):
        matches = [] if spec is None else spec.match_flag(flag.name)
        dest = flag.name[2:] if spec is None else matches[0].dest if len(matches) == 1 else None
        if dest == "config_file" and len(flag.values) == 1:
            raw = flag.values[0]
            break
    if not raw:
        return None
    return Path(raw if raw.endswith(".toml") else raw + ".toml")


def load_train_args(config_file: Path | None, tokens: list[str], spec: ArgSpec | None = None,
                    origins: list[ArgsOrigin] | None = None) -> TrainArgs:
    """Defaults, then the `--config_file` TOML (if any), then the command line: sd-scripts' namespace."""
    if origins is None:
        origins = [ArgsOrigin(AFTER_DASHES, tuple(tokens))] if tokens else []
    flags, stray = scan_cli(tokens, origins)
    result = TrainArgs(cli=flags, stray=stray, spec=spec, origins=list(origins))
    result.config_file = _config_file(flags, spec, config_file)
    if spec is not None:
        result.values.update(_defaults(spec))
    if result.config_file is not None:
        result.toml = read_config(result.config_file)
    for item in result.toml:
        result.values[item.key] = Setting(item.value, item.place, "toml")
    for flag in flags:
        _apply_flag(result, flag)
    return result


def _apply_flag(result: TrainArgs, flag: CliFlag) -> None:
    spec = result.spec
    if spec is None:  # no argparse spec: the raw strings (a bare flag is on)
        if flag.name.startswith("--") and len(flag.name) > 2 and flag.name != "--config_file":
            values = flag.values
            value: Any = True if not values else values[0] if len(values) == 1 else list(values)
            result.values[flag.name[2:]] = Setting(value, flag.place, "cli")
        return
    matches = spec.match_flag(flag.name)
    if len(matches) != 1 or matches[0].dest == "config_file":
        return  # argparse stops on these; args.known reports them
    opt = matches[0]
    if opt.action in ("store_true", "store_false") and flag.values:
        return
    current = result.values.get(opt.dest)
    value = cli_value(opt, flag, current.value if current else None)
    result.values[opt.dest] = Setting(value, flag.place, "cli")


# --- where the command-line tokens live ------------------------------------------------------------------

def arg_origins(target: Target) -> list[ArgsOrigin]:
    """The Target's tokens split by where they come from: the leading ones from a lorasetup.toml's (or a
    pyproject.toml's) `train_args` when that file still says so, the rest from the command line after `--`."""
    tokens = tuple(target.train_args)
    source = target.sources.get("train_args", "")
    origins: list[ArgsOrigin] = []
    path = Path(source)
    if path.name in FILE_ORIGINS and path.is_absolute():
        found = _file_tokens(path)
        if found is not None and tokens[:len(found.tokens)] == found.tokens:
            origins.append(found)
            tokens = tokens[len(found.tokens):]
    if tokens:
        origins.append(ArgsOrigin(AFTER_DASHES, tokens))
    return origins


def _file_tokens(path: Path) -> ArgsOrigin | None:
    try:
        seen = files.read_bytes(path)
        data = tomllib.loads(seen.decode("utf-8"))
    except (files.FileProblem, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    table: tuple[str, ...] = ("tool", "lorasetup") if path.name == "pyproject.toml" else ()
    for part in table:
        data = data.get(part) if isinstance(data, dict) else None
    raw = data.get("train_args") if isinstance(data, dict) else None
    if isinstance(raw, str):
        try:
            tokens = tuple(shlex.split(raw))
        except ValueError:
            return None
    elif isinstance(raw, list):
        tokens = tuple(str(v) for v in raw)
    else:
        return None
    return ArgsOrigin(f"{path.name} train_args", tokens, path, table, seen)


# --- per run ---------------------------------------------------------------------------------------------

def argspec(ctx: Context) -> ArgSpec:
    """The entry script's options, once per run (raises ArgSpecError/CheckFailed when they cannot be read)."""
    return ctx.memo("args.spec", lambda: _load_spec(ctx))


def _load_spec(ctx: Context) -> ArgSpec:
    root = ctx.target.sd_scripts
    if root is None:
        raise CheckFailed("no sd-scripts checkout to read the script's options from",
                          hint="point lorasetup at the checkout with --kohya-root")
    return load_argspec(root, ctx.target.script)


def prefetch_spec(ctx: Context) -> None:
    if ctx.target.sd_scripts is not None:
        ctx.prefetch("args.spec", lambda: _load_spec(ctx))


def optional_spec(ctx: Context) -> ArgSpec | None:
    try:
        return argspec(ctx)
    except CheckFailed:
        return None


def train_args(ctx: Context) -> TrainArgs:
    """The run's namespace, once per run (raises TrainArgsError for an unreadable config)."""
    return ctx.memo("train_args", lambda: load_train_args(ctx.target.train_config, list(ctx.target.train_args),
                                                          optional_spec(ctx), arg_origins(ctx.target)))


def path_setting(ctx: Context, field_name: str, arg: str) -> Path | None:
    """A path from the Target, else from the training arguments (e.g. base_model vs
    `pretrained_model_name_or_path`); relative paths resolve from the working directory, as in sd-scripts."""
    value = getattr(ctx.target, field_name)
    if value is not None:
        return value
    raw = train_args(ctx).get(arg)
    if not raw or not isinstance(raw, (str, os.PathLike)):
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)
