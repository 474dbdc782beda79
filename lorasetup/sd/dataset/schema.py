"""sd-scripts' dataset-config schema, checked the way its `ConfigSanitizer` checks it, but reporting every error.

sd-scripts (library/config_util.py) validates `--dataset_config` with voluptuous and stops at the first error,
after a slow start. This module reproduces the same accept/reject decision for a given entry script (which
`ConfigSanitizer(dreambooth, finetuning, controlnet, dropout)` it builds) and reports each error with its place
(`datasets[0].subsets[1].num_repeat`), what was expected and what was found, and a did-you-mean.

The schema tables are read from the checkout's own `library/config_util.py` (class-level dict literals of
`ConfigSanitizer`); the built-in copy below (sd-scripts 48d368fa) is used only when that file cannot be read.
"""

from __future__ import annotations

import ast
import datetime
import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup.engine import files
from lorasetup.engine.tomledit import TomlLayout

# Value kinds, one per validator that ConfigSanitizer uses (library/config_util.py).
BOOL, INT, FLOAT, STR, TABLE = "bool", "int", "float", "str", "table"
NUMBER = "float|int"            # Any(float, int)
FLOAT_PAIR = "float pair"       # __validate_and_convert_twodim(float): ExactSequence([float, float])
INT_OR_PAIR = "int or int pair"  # __validate_and_convert_scalar_or_twodim(int)

_CLASS_KIND = {"bool": BOOL, "int": INT, "float": FLOAT, "str": STR, "dict": TABLE}

# library/config_util.py ConfigSanitizer at sd-scripts 48d368fa: {table name: {key: (kind, required)}}.
BUILTIN_SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "SUBSET_ASCENDABLE_SCHEMA": {
        "color_aug": (BOOL, False), "face_crop_aug_range": (FLOAT_PAIR, False), "flip_aug": (BOOL, False),
        "num_repeats": (INT, False), "random_crop": (BOOL, False), "shuffle_caption": (BOOL, False),
        "keep_tokens": (INT, False), "keep_tokens_separator": (STR, False), "secondary_separator": (STR, False),
        "caption_separator": (STR, False), "enable_wildcard": (BOOL, False), "token_warmup_min": (INT, False),
        "token_warmup_step": (NUMBER, False), "caption_prefix": (STR, False), "caption_suffix": (STR, False),
        "custom_attributes": (TABLE, False), "resize_interpolation": (STR, False),
    },
    "DO_SUBSET_ASCENDABLE_SCHEMA": {
        "caption_dropout_every_n_epochs": (INT, False), "caption_dropout_rate": (NUMBER, False),
        "caption_tag_dropout_rate": (NUMBER, False),
    },
    "DB_SUBSET_ASCENDABLE_SCHEMA": {"caption_extension": (STR, False), "class_tokens": (STR, False),
                                    "cache_info": (BOOL, False)},
    "DB_SUBSET_DISTINCT_SCHEMA": {"image_dir": (STR, True), "is_reg": (BOOL, False), "alpha_mask": (BOOL, False)},
    "FT_SUBSET_DISTINCT_SCHEMA": {"metadata_file": (STR, True), "image_dir": (STR, False),
                                  "alpha_mask": (BOOL, False)},
    "CN_SUBSET_ASCENDABLE_SCHEMA": {"caption_extension": (STR, False), "cache_info": (BOOL, False)},
    "CN_SUBSET_DISTINCT_SCHEMA": {"image_dir": (STR, True), "conditioning_data_dir": (STR, True)},
    "DATASET_ASCENDABLE_SCHEMA": {
        "batch_size": (INT, False), "bucket_no_upscale": (BOOL, False), "bucket_reso_steps": (INT, False),
        "enable_bucket": (BOOL, False), "max_bucket_reso": (INT, False), "min_bucket_reso": (INT, False),
        "validation_seed": (INT, False), "validation_split": (FLOAT, False), "resolution": (INT_OR_PAIR, False),
        "network_multiplier": (FLOAT, False), "resize_interpolation": (STR, False),
    },
}
SCHEMA_TABLES = tuple(BUILTIN_SCHEMA)

# Training-argument names that sd-scripts maps onto dataset keys (config_util.py ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME),
# plus its kept misspelling `--caption_extention` (train_util.py add_dataset_arguments).
ARG_TO_KEY = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats",
              "caption_extention": "caption_extension"}
PATH_KEYS = ("image_dir", "metadata_file", "conditioning_data_dir")


@dataclass(frozen=True)
class Support:
    """The four flags of `ConfigSanitizer(...)` for one entry script, and where they were read."""

    dreambooth: bool
    finetuning: bool
    controlnet: bool
    dropout: bool
    origin: str = ""

    def describe(self) -> str:
        kinds = [name for name, on in (("DreamBooth", self.dreambooth), ("fine-tuning", self.finetuning),
                                       ("ControlNet", self.controlnet)) if on]
        return f"{' + '.join(kinds)} subsets, caption dropout {'on' if self.dropout else 'off'}"


@dataclass
class SchemaError:
    """One thing sd-scripts' sanitizer rejects, at one place in the file."""

    place: str
    problem: str
    expected: str | None = None
    found: str | None = None
    hint: str | None = None
    line: int | None = None  # 1-based, when the place could be located in the TOML text
    rename_to: str | None = None  # an unknown key's one clear right name, for a fix that renames it

    def render(self, file_name: str = "") -> str:
        where = f"{file_name}:{self.line} " if file_name and self.line else (f"{file_name} " if file_name else "")
        text = f"{where}{self.place}: {self.problem}"
        if self.expected:
            text += f"; expected {self.expected}"
        if self.found is not None:
            text += f", found {self.found}"
        if self.hint:
            text += f". {self.hint}"
        return text


class ConfigSyntaxError(Exception):
    """The dataset config cannot be parsed; `line`/`column` are 1-based when known; `hint` for a file that cannot
    be read at all (a pipe, a folder, not UTF-8, too large)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.column, self.hint = message, line, column, hint


# ----------------------------------------------------------------------------- schema tables from the checkout

def read_schema(config_util: Path | None) -> tuple[dict[str, dict[str, tuple[str, bool]]], str]:
    """The ConfigSanitizer tables of a checkout's `library/config_util.py`, and where they came from.

    Falls back to the built-in copy when the file is missing or uses a construct this reader does not know."""
    if config_util is None or not config_util.is_file():
        return BUILTIN_SCHEMA, "built-in copy of sd-scripts 48d368fa (no library/config_util.py to read)"
    try:
        key = (str(config_util), config_util.stat().st_mtime_ns)
        if key not in _SCHEMA_CACHE:
            _SCHEMA_CACHE[key] = _parse_schema(files.read_source(config_util))
        return _SCHEMA_CACHE[key], str(config_util)
    except (OSError, files.FileProblem, SyntaxError, ValueError) as exc:
        return BUILTIN_SCHEMA, f"built-in copy of sd-scripts 48d368fa ({config_util}: {exc})"


_SCHEMA_CACHE: dict[tuple[str, int], dict[str, dict[str, tuple[str, bool]]]] = {}


def _parse_schema(source: str) -> dict[str, dict[str, tuple[str, bool]]]:
    tree = ast.parse(source)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ConfigSanitizer"), None)
    if cls is None:
        raise ValueError("no class ConfigSanitizer")
    tables: dict[str, dict[str, tuple[str, bool]]] = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in SCHEMA_TABLES and isinstance(node.value, ast.Dict):
            table: dict[str, tuple[str, bool]] = {}
            for k, v in zip(node.value.keys, node.value.values):
                name, required = _schema_key(k)
                table[name] = (_schema_kind(v), required)
            tables[node.targets[0].id] = table
    missing = [name for name in SCHEMA_TABLES if name not in tables]
    if missing:
        raise ValueError(f"ConfigSanitizer lacks {', '.join(missing)}")
    return tables


def _schema_key(node: ast.expr | None) -> tuple[str, bool]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Required" \
            and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value), True
    raise ValueError(f"unknown schema key at line {getattr(node, 'lineno', '?')}")


def _schema_kind(node: ast.expr) -> str:
    if isinstance(node, ast.Name) and node.id in _CLASS_KIND:
        return _CLASS_KIND[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Any":
        kinds = {_schema_kind(a) for a in node.args}
        if kinds == {FLOAT, INT}:
            return NUMBER
    if isinstance(node, ast.Call) and len(node.args) == 2 and isinstance(node.args[1], ast.Name):
        helper = ast.unparse(node.args[0])
        if "scalar_or_twodim" in helper and node.args[1].id == "int":
            return INT_OR_PAIR
        if "twodim" in helper and node.args[1].id == "float":
            return FLOAT_PAIR
    raise ValueError(f"unknown validator {ast.unparse(node)} at line {node.lineno}")


# ----------------------------------------------------------------------------- which sanitizer a script builds

_SANITIZER_CALL = re.compile(r"ConfigSanitizer\(\s*([^()]*?)\s*\)")
_IMPORT = re.compile(r"^\s*(?:import\s+(\w+)|from\s+(\w+)\s+import\b)", re.MULTILINE)


def sanitizer_support(script: Path | None, flag: Callable[[str], bool]) -> Support:
    """Read `ConfigSanitizer(a, b, c, d)` from the entry script, or from the sibling module it builds on
    (sdxl_train_network.py imports train_network). `args.X` arguments are looked up with `flag("X")`."""
    for path in _script_and_bases(script):
        try:
            found = _SANITIZER_CALL.search(files.read_source(path))
        except files.FileProblem:
            continue
        if not found:
            continue
        values: list[bool] = []
        for token in (t.strip() for t in found.group(1).split(",")):
            if token in ("True", "False"):
                values.append(token == "True")
            elif token.startswith("args."):
                values.append(flag(token[5:]))
            else:
                break
        if len(values) == 4:
            origin = f"{path.name}: ConfigSanitizer({found.group(1)})"
            return Support(values[0], values[1], values[2], values[3], origin=origin)
    # train_network.py's rules (library/config_util.py usage there), when no script can be read.
    return Support(True, True, flag("masked_loss"), True,
                   origin="assumed train_network.py rules (no readable entry script)")


def _script_and_bases(script: Path | None) -> Iterable[Path]:
    if script is None or not script.is_file():
        return []
    found = [script]
    try:
        text = files.read_source(script)
    except files.FileProblem:
        return found
    for match in _IMPORT.finditer(text):
        sibling = script.parent / f"{match.group(1) or match.group(2)}.py"
        if sibling.is_file() and sibling not in found:
            found.append(sibling)
    return found


# ----------------------------------------------------------------------------- reading the file

@dataclass
class LoadedConfig:
    """A parsed dataset config with its text (for line numbers and targeted edits)."""

    path: Path
    data: Any
    text: str
    fmt: str  # "toml" or "json"
    layout: TomlLayout | None = None


def load_config(path: Path) -> LoadedConfig:
    """Parse `.toml` or `.json` as sd-scripts does (config_util.load_user_config); raise ConfigSyntaxError."""
    fmt = "json" if path.name.lower().endswith(".json") else "toml" if path.name.lower().endswith(".toml") else ""
    if not fmt:
        raise ConfigSyntaxError(f"{path.name}: sd-scripts reads only .toml or .json dataset configs "
                                "(it stops with 'not supported config file format')")
    try:
        text = files.read_text(path)
        data = files.parse_json(path, text) if fmt == "json" else files.parse_toml(path, text)
    except files.FileProblem as exc:
        raise _syntax_error(exc) from None
    return LoadedConfig(path, data, text, fmt, TomlLayout(text) if fmt == "toml" else None)


def _syntax_error(exc: files.FileProblem) -> ConfigSyntaxError:
    """A file problem in sd-scripts' words: load_user_config tests `Path.is_file()` first ('file not found'
    for anything else) and parses with `toml.load`/`json.load`, which raise on the rest."""
    if exc.kind in ("missing", "loop", "not-regular"):
        return ConfigSyntaxError(f"{exc.path}: dataset config not found: it {exc.problem}", hint=(
            f"{exc.hint}; sd-scripts stops at start with 'file not found'"))
    if exc.kind == "syntax":
        message = exc.problem.split(": ", 1)[-1]
        return ConfigSyntaxError(message, exc.line, exc.column)
    return ConfigSyntaxError(exc.summary, hint=f"{exc.hint}; sd-scripts stops at start when it cannot read it")


# ----------------------------------------------------------------------------- where things are in a TOML file



def format_place(path: Iterable[Any]) -> str:
    """("datasets", 0, "subsets", 1, "num_repeat") -> "datasets[0].subsets[1].num_repeat"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = str(part) if re.fullmatch(r"[A-Za-z0-9_-]+", str(part)) else json.dumps(str(part), ensure_ascii=False)
        out += f".{name}" if out else name
    return out


# ----------------------------------------------------------------------------- validation

def accepts(kind: str, value: Any) -> bool:
    """Exactly voluptuous' test for each kind (isinstance: a bool is an int, an int is not a float)."""
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int)
    if kind == FLOAT:
        return isinstance(value, float)
    if kind == STR:
        return isinstance(value, str)
    if kind == TABLE:
        return isinstance(value, dict)
    if kind == NUMBER:
        return isinstance(value, (float, int))
    if kind == FLOAT_PAIR:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value)
    if kind == INT_OR_PAIR:
        return isinstance(value, int) or (isinstance(value, (list, tuple)) and len(value) == 2
                                          and all(isinstance(v, int) for v in value))
    raise ValueError(kind)


_EXPECTED = {
    BOOL: "true or false (no quotes)", INT: "an integer (no quotes)",
    FLOAT: "a float with a decimal point (write 1.0, not 1: sd-scripts rejects an integer here)",
    STR: "a quoted string", TABLE: "a table", NUMBER: "a number",
    FLOAT_PAIR: "two floats like [2.0, 4.0] (integers are rejected here)",
    INT_OR_PAIR: "an integer like 512 or a pair [512, 768]",
}


def describe_value(value: Any) -> str:
    """A value as it would read in TOML, with its type."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, str):
        return f"{json.dumps(value, ensure_ascii=False)} (a string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = json.dumps(value, default=str)
        return f"{shown if len(shown) < 40 else shown[:37] + '...'} (an array)"
    if value is None:
        return "null"
    return f"{value} (a {type(value).__name__})"


def _hint_for_type(kind: str, value: Any) -> str | None:
    if kind == FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return f"write {value}.0"
    if kind == FLOAT_PAIR and isinstance(value, list) and len(value) == 2 \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"write [{float(value[0])}, {float(value[1])}]"
    if kind in (INT, INT_OR_PAIR) and isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return f"write {value.strip()} without quotes"
    if kind == INT_OR_PAIR and isinstance(value, str) and re.fullmatch(r"\s*\d+\s*,\s*\d+\s*", value):
        w, h = (v.strip() for v in value.split(","))
        return f"the dataset config takes [{w}, {h}], not the command line's \"{w},{h}\""
    if kind == BOOL and isinstance(value, str) and value.lower() in ("true", "false"):
        return f"write {value.lower()} without quotes"
    if kind == STR and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'quote it: "{value}"'
    return None


class SchemaChecker:
    """Validates a parsed config against the sanitizer one entry script builds."""

    def __init__(self, support: Support, tables: dict[str, dict[str, tuple[str, bool]]],
                 train_arg_names: Iterable[str] = (), origin: str = "built-in copy") -> None:
        self.support = support
        self.origin = origin  # where the tables were read
        t = tables
        dropout = t["DO_SUBSET_ASCENDABLE_SCHEMA"] if support.dropout else {}
        # The merges below follow ConfigSanitizer.__init__ (library/config_util.py), later tables winning.
        self.subset = {
            "dreambooth": _merge(t["SUBSET_ASCENDABLE_SCHEMA"], t["DB_SUBSET_DISTINCT_SCHEMA"],
                                 t["DB_SUBSET_ASCENDABLE_SCHEMA"], dropout),
            "finetuning": _merge(t["SUBSET_ASCENDABLE_SCHEMA"], t["FT_SUBSET_DISTINCT_SCHEMA"], dropout),
            "controlnet": _merge(t["SUBSET_ASCENDABLE_SCHEMA"], t["CN_SUBSET_DISTINCT_SCHEMA"],
                                 t["CN_SUBSET_ASCENDABLE_SCHEMA"], dropout),
        }
        self.dataset = {
            "dreambooth": _merge(t["DATASET_ASCENDABLE_SCHEMA"], t["SUBSET_ASCENDABLE_SCHEMA"],
                                 t["DB_SUBSET_ASCENDABLE_SCHEMA"], dropout),
            "finetuning": _merge(t["DATASET_ASCENDABLE_SCHEMA"], t["SUBSET_ASCENDABLE_SCHEMA"], dropout),
            "controlnet": _merge(t["DATASET_ASCENDABLE_SCHEMA"], t["SUBSET_ASCENDABLE_SCHEMA"],
                                 t["CN_SUBSET_ASCENDABLE_SCHEMA"], dropout),
        }
        self.general = _merge(t["DATASET_ASCENDABLE_SCHEMA"], t["SUBSET_ASCENDABLE_SCHEMA"],
                              t["DB_SUBSET_ASCENDABLE_SCHEMA"] if support.dreambooth else {},
                              t["CN_SUBSET_ASCENDABLE_SCHEMA"] if support.controlnet else {}, dropout)
        self.dataset_only = set(t["DATASET_ASCENDABLE_SCHEMA"])
        self.subset_only = set(t["DB_SUBSET_DISTINCT_SCHEMA"]) | set(t["FT_SUBSET_DISTINCT_SCHEMA"]) \
            | set(t["CN_SUBSET_DISTINCT_SCHEMA"])
        self.dropout_keys = set(t["DO_SUBSET_ASCENDABLE_SCHEMA"])
        self.every_key = set().union(*t.values())
        self.train_args = set(train_arg_names)

    # -- kinds of datasets, as ConfigSanitizer decides them
    def dataset_kind(self, dataset: dict) -> str | None:
        """"dreambooth", "finetuning", "controlnet", or None when DreamBooth and fine-tuning subsets are mixed."""
        s = self.support
        subsets = dataset.get("subsets", [])
        subsets = [x for x in subsets if isinstance(x, dict)] if isinstance(subsets, list) else []
        if s.dreambooth and s.finetuning:  # validate_flex_dataset
            if s.controlnet and all("conditioning_data_dir" in x for x in subsets):
                return "controlnet"
            if all("metadata_file" in x for x in subsets):
                return "finetuning"
            if all("metadata_file" not in x for x in subsets):
                return "dreambooth"
            return None
        if s.dreambooth:
            return "controlnet" if s.controlnet else "dreambooth"
        return "finetuning" if s.finetuning else "controlnet"

    def validate(self, data: Any, fmt: str = "toml", layout: TomlLayout | None = None) -> list[SchemaError]:
        errors: list[SchemaError] = []
        if not isinstance(data, dict):
            errors.append(SchemaError("(top level)", "the config must be a table/object with `general` and "
                                      "`datasets`", found=describe_value(data)))
            return errors
        if fmt == "toml":
            _mixed_arrays(data, (), errors)
        for key, value in data.items():
            if key == "general":
                if isinstance(value, dict):
                    self._table(value, self.general, ("general",), "general", errors)
                else:
                    errors.append(SchemaError("general", "wrong type", "a table [general]", describe_value(value)))
            elif key == "datasets":
                if not isinstance(value, list):
                    errors.append(SchemaError("datasets", "wrong type", "an array of tables [[datasets]]",
                                              describe_value(value)))
                    continue
                for i, dataset in enumerate(value):
                    self._dataset(dataset, i, errors)
            else:
                errors.append(self._unknown((key,), key, {"general": 0, "datasets": 0}, "top"))
        if layout is not None:
            for err in errors:  # a missing key points at its table's header
                path = parse_place(err.place)
                err.line = layout.line_of(path) or layout.line_of(path[:-1])
        return errors

    def _dataset(self, dataset: Any, i: int, errors: list[SchemaError]) -> None:
        where = ("datasets", i)
        if not isinstance(dataset, dict):
            errors.append(SchemaError(format_place(where), "wrong type", "a table [[datasets]]",
                                      describe_value(dataset)))
            return
        kind = self.dataset_kind(dataset)
        subsets = dataset.get("subsets", [])
        if kind is None:
            ft = [j for j, x in enumerate(subsets) if isinstance(x, dict) and "metadata_file" in x]
            db = [j for j, x in enumerate(subsets) if isinstance(x, dict) and "metadata_file" not in x]
            errors.append(SchemaError(
                format_place(where), "DreamBooth subsets (image_dir, no metadata_file) and fine-tuning subsets "
                "(metadata_file) cannot be mixed in one dataset",
                found=f"fine-tuning subsets {ft}, DreamBooth subsets {db}",
                hint="split them into two [[datasets]]"))
        schema = dict(self.dataset[kind or "dreambooth"])
        self._table({k: v for k, v in dataset.items() if k != "subsets"}, schema, where, "dataset", errors,
                    kind or "")
        if "subsets" not in dataset:
            return
        if not isinstance(subsets, list):
            errors.append(SchemaError(format_place(where + ("subsets",)), "wrong type",
                                      "an array of tables [[datasets.subsets]]", describe_value(subsets)))
            return
        for j, subset in enumerate(subsets):
            at = where + ("subsets", j)
            if not isinstance(subset, dict):
                errors.append(SchemaError(format_place(at), "wrong type", "a table [[datasets.subsets]]",
                                          describe_value(subset)))
                continue
            subset_kind = kind or ("finetuning" if "metadata_file" in subset else "dreambooth")
            self._table(subset, self.subset[subset_kind], at, "subset", errors, subset_kind)

    def _table(self, table: dict, schema: dict[str, tuple[str, bool]], where: tuple, level: str,
               errors: list[SchemaError], kind: str = "") -> None:
        for key, value in table.items():
            if key not in schema:
                errors.append(self._unknown(where + (key,), key, schema, level, kind))
                continue
            value_kind = schema[key][0]
            if not accepts(value_kind, value):
                errors.append(SchemaError(format_place(where + (key,)), "wrong type", _EXPECTED[value_kind],
                                          describe_value(value), _hint_for_type(value_kind, value)))
        for key, (_, required) in schema.items():
            if required and key not in table:
                errors.append(SchemaError(format_place(where + (key,)), "required key not provided",
                                          hint=self._required_hint(key, kind)))

    def _required_hint(self, key: str, kind: str) -> str:
        if key == "image_dir":
            return "add image_dir = '/path/to/images' to this subset (the folder that holds the images)"
        if key == "conditioning_data_dir":
            if self.support.dreambooth:  # masked_loss turned ControlNet subsets on (train_network.py, train_db.py)
                return ("with masked_loss this script reads ControlNet subsets: add conditioning_data_dir (the mask "
                        "images, same file names), or drop masked_loss")
            return "add conditioning_data_dir (the conditioning images, same file names as in image_dir)"
        if key == "metadata_file":
            return "a fine-tuning subset needs metadata_file (the JSON made by finetune/merge_*.py)"
        return f"add {key}"

    def _unknown(self, path: tuple, key: Any, allowed: dict, level: str, kind: str = "") -> SchemaError:
        """An extra key, with the most useful hint: the right name, the right level, or the right file."""
        place = format_place(path)
        key = str(key)
        close = difflib.get_close_matches(key, [str(k) for k in allowed], n=1, cutoff=0.6)
        label = {"dreambooth": "DreamBooth", "finetuning": "fine-tuning", "controlnet": "ControlNet"}.get(kind, "")
        hint: str | None = None
        if key in ARG_TO_KEY and ARG_TO_KEY[key] in allowed:
            hint = f"the dataset config calls it `{ARG_TO_KEY[key]}`"
        elif key not in self.every_key:
            if close:
                hint = f"did you mean `{close[0]}`?"
            elif key in self.train_args:
                hint = (f"`{key}` is a training argument, not a dataset-config key: put it in the training config "
                        f"(--config_file) or on the command line (--{key})")
            else:
                wider = difflib.get_close_matches(key, sorted(self.every_key), n=1, cutoff=0.75)
                hint = f"did you mean `{wider[0]}` (allowed at another level)?" if wider else None
        elif level == "top":
            hint = f"`{key}` belongs inside [general], [[datasets]] or [[datasets.subsets]], not at the top level"
        elif level == "subset" and key in self.dataset_only:
            hint = f"`{key}` is a dataset-level key: move it to its [[datasets]] table or to [general]"
        elif level in ("general", "dataset") and key in self.subset_only:
            hint = f"`{key}` belongs in each [[datasets.subsets]] table"
        elif key in self.dropout_keys and not self.support.dropout:
            hint = "this script does not support caption dropout (textual inversion); remove it"
        elif key == "conditioning_data_dir" and not self.support.controlnet:
            hint = ("ControlNet subsets are read only when the script supports them (train_network.py: "
                    "with --masked_loss); remove it or add masked_loss")
        elif key == "metadata_file" and not self.support.finetuning:
            hint = "this script does not read fine-tuning subsets (metadata_file); use image_dir subsets"
        elif level == "dataset" and kind == "finetuning":
            hint = (f"`{key}` is not allowed in a fine-tuning dataset, and sd-scripts treats a [[datasets]] "
                    "without subsets as one: add its [[datasets.subsets]] or move the key to [general]")
        elif label:
            hint = f"`{key}` is not allowed in a {label} {level}"
        else:
            hint = f"`{key}` is not allowed in [{level}] for this script"
        return SchemaError(place, "unknown key (sd-scripts: 'extra keys not allowed')", hint=hint,
                           rename_to=self._clear_rename(key, allowed))

    def _clear_rename(self, key: str, allowed: dict) -> str | None:
        """The key this one plainly means at this level: the dataset-config name of a training argument, or
        the one close spelling (no second candidate)."""
        if key in ARG_TO_KEY and ARG_TO_KEY[key] in allowed:
            return ARG_TO_KEY[key]
        if key in self.every_key:
            return None
        close = difflib.get_close_matches(key, [str(k) for k in allowed], n=2, cutoff=0.8)
        return close[0] if len(close) == 1 else None


def _merge(*tables: dict[str, tuple[str, bool]]) -> dict[str, tuple[str, bool]]:
    merged: dict[str, tuple[str, bool]] = {}
    for table in tables:
        merged.update(table)
    return merged


def parse_place(place: str) -> tuple:
    """"datasets[0].subsets[1].num_repeats" -> ("datasets", 0, "subsets", 1, "num_repeats")."""
    out: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", place):
        out.append(int(index) if index else name)
    return tuple(out)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, str, list, dict)):
        return type(value).__name__
    if isinstance(value, (datetime.date, datetime.time)):
        return "datetime"
    return type(value).__name__


def _mixed_arrays(value: Any, path: tuple, errors: list[SchemaError]) -> None:
    """sd-scripts parses TOML with the `toml` package (TOML 0.5), which rejects arrays that mix value types
    ("Not a homogeneous array"); tomllib (TOML 1.0) accepts them."""
    if isinstance(value, dict):
        for key, sub in value.items():
            _mixed_arrays(sub, path + (key,), errors)
    elif isinstance(value, list):
        kinds = {_toml_type(v) for v in value}
        if len(kinds) > 1 and not (isinstance(value[0], dict) if value else False):
            errors.append(SchemaError(
                format_place(path), "an array mixing value types", "values of one type",
                f"{', '.join(sorted(kinds))}",
                "sd-scripts reads TOML with the `toml` package, which stops with 'Not a homogeneous array'"))
        for i, sub in enumerate(value):
            _mixed_arrays(sub, path + (i,), errors)


def train_arg_names(sd_scripts: Path | None, script: Path | None) -> set[str]:
    """Option names the checkout's argparse defines (a cheap text scan for did-you-mean messages only)."""
    names: set[str] = set()
    paths = [p for p in _script_and_bases(script)]
    if sd_scripts is not None:
        paths.append(sd_scripts / "library" / "train_util.py")
    for path in paths:
        try:
            names.update(re.findall(r"add_argument\(\s*\"--([A-Za-z0-9_]+)\"", files.read_source(path)))
        except files.FileProblem:
            continue
    return names
