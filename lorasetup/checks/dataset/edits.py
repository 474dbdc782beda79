"""Targeted text edits of the dataset TOML and the training config TOML, applied by the dataset gate's safe
fixes: every other byte is kept, the file must not have changed since the check read it, and the edited file
must parse to exactly the intended data. A backup is written first."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup.engine.fileedit import backup
from lorasetup.engine.result import Fix, FixError
from lorasetup.engine.target import tomllib
from lorasetup.sd.dataset.blueprint import Plan, Value
from lorasetup.sd.dataset.schema import TomlLayout, format_place, parse_place
from lorasetup.sd.trainargs import TrainArgs


@dataclass
class Edit:
    """Replace text[start:end] by `text`; `verify(data)` says whether the parsed result is the intended one."""

    start: int
    end: int
    text: str
    label: str


def edit_fix(path: Path, planned: str, edits: list[Edit], expected: Callable[[Any], bool],
              description: str) -> Fix:
    """A safe fix that applies targeted text edits to `path`, keeping every other byte, after a backup.

    It refuses when the file changed since it was checked, or when the edited file would not parse to the
    intended data (`expected`)."""
    commands = [f"edit {path}: {e.label}" for e in edits] + [f"backup first: {path.name}.bak-<timestamp>"]

    def apply() -> None:
        try:
            current = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FixError(f"{path}: cannot read it again: {exc}") from None
        if current != planned:
            raise FixError(f"{path} changed since it was checked; run lorasetup again before fixing")
        new = planned
        for e in sorted(edits, key=lambda e: e.start, reverse=True):
            new = new[:e.start] + e.text + new[e.end:]
        try:
            data = tomllib.loads(new)
        except tomllib.TOMLDecodeError as exc:
            raise FixError(f"{path}: the edit would not parse ({exc}); nothing was changed") from None
        if not expected(data):
            raise FixError(f"{path}: the edit would change more than intended; nothing was changed")
        backup(path)
        try:
            path.write_bytes(new.encode("utf-8"))
        except OSError as exc:
            raise FixError(f"{path}: cannot write it: {exc.strerror}") from None
    return Fix(description, commands, apply, safe=True)


def toml_str(value: str) -> str:
    """A TOML basic string for simple values (extensions, numbers as text)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def set_key(text: str, layout: TomlLayout, table: tuple, key: str, literal: str) -> Edit | None:
    """Replace the value of `key` in `table`, or insert `key = literal` right after the table's header."""
    span = layout.tables.get(table)
    if span is None:
        return None
    where = format_place(table) if table else "top level"
    if key in span.keys:
        k = span.keys[key]
        return Edit(k.start, k.end, literal, f"line {k.line + 1}: {key} = {literal}")
    indent = ""
    if span.keys:
        first = min(span.keys.values(), key=lambda k: k.start)
        line_start = text.rfind("\n", 0, first.start) + 1
        lead = text[line_start:first.start]
        indent = lead[:len(lead) - len(lead.lstrip(" \t"))]
    at = span.header_end
    prefix = _newline(text) if at > 0 and not text[:at].endswith("\n") else ""
    line = (span.header_line + 2) if span.header_line is not None else 1
    return Edit(at, at, f"{prefix}{indent}{key} = {literal}{_newline(text)}",
                f"add `{key} = {literal}` at line {line} ({where})")


def _data_at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def expect_changes(old: Any, changes: list[tuple[tuple, str, Any]]) -> Callable[[Any], bool]:
    """The parsed new file must equal the old data with exactly these (table, key, value) changes."""
    want = copy.deepcopy(old)
    for table, key, value in changes:
        _data_at(want, table)[key] = value
    return lambda data: data == want


def table_of(place: str) -> tuple:
    return parse_place(place)[:-1]


def value_edit(plan: Plan, value: Value, literal: str) -> Edit | None:
    """An edit that replaces the value at `value.place` in the dataset TOML."""
    if plan.config is None or plan.config.layout is None:
        return None
    table = table_of(value.place)
    key = value.place.rsplit(".", 1)[-1]
    return set_key(plan.config.text, plan.config.layout, table, key, literal)


def train_config_fix(args: TrainArgs | None, key: str, literal: str, value: Any, description: str) -> Fix | None:
    """Set `key` in the training config TOML (`--config_file`): where it is already set, else at the top level.
    None when there is no such file, or the value comes from the command line (which a file edit cannot change)."""
    if args is None or args.config_file is None or (key in args and args.place(key).startswith("--")):
        return None
    path = args.config_file
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    layout = TomlLayout(text)
    table = next((t for t, span in layout.tables.items() if len(t) <= 1 and key in span.keys), ())
    edit = set_key(text, layout, table, key, literal)
    if edit is None:
        return None
    return edit_fix(path, text, [edit], expect_changes(data, [(table, key, value)]), description)
