"""The one guarded TOML editor: every fix that changes a person's TOML file goes through it.

An edit is planned from the bytes the check read (`TomlEdit.seen`) as a few targeted text changes: set a value,
rename a key, add a key to a table. Everything else, comments (also a trailing comment on the edited line) and
layout included, keeps its bytes. Before writing, the new text is parsed again and must equal the old document
with exactly the intended changes; the file must still hold the bytes the check read; it is backed up
(`<name>.bak-<timestamp>`) and written atomically (lorasetup.engine.fileedit).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine.fileedit import guarded_write, own_changes, read_bytes
from lorasetup.engine.result import Fix, FixError
from lorasetup.engine.target import tomllib

TablePath = tuple  # ("datasets", 0, "subsets", 1); () is the root table
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


# ----------------------------------------------------------------------------- rendering values


def toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else a basic string."""
    return key if BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Any) -> str:
    """One value in TOML syntax (what tomllib returns: str, int, float, bool, list, dict, dates and times)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML's, except that TOML wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"no TOML form for {type(value).__name__}")


# ----------------------------------------------------------------------------- where things are in a TOML text

@dataclass
class KeySpan:
    """One `key = value` line: its 0-based line, the character span of the value, and that of the key."""

    line: int
    start: int
    end: int
    key_start: int = 0
    key_end: int = 0


@dataclass
class TableSpan:
    """One table: its header (none for the root table) and its keys."""

    header_line: int | None  # 0-based; None for the root table
    header_end: int          # text offset just after the header line (0 for the root)
    keys: dict[str, KeySpan] = field(default_factory=dict)


class TomlLayout:
    """Where each table (by place) and each of its keys sits in a TOML text that tomllib accepted.

    Handles headers, arrays of tables, strings of all four kinds, comments, and multi-line arrays and
    inline tables (whose insides are not mapped)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tables: dict[TablePath, TableSpan] = {(): TableSpan(None, 0)}
        self._scan()

    def line_of(self, path: Iterable[Any]) -> int | None:
        """1-based line of a key (path ends with a key name) or a table header; None if unmapped."""
        path = tuple(path)
        table = self.tables.get(path)
        if table is not None:
            return None if table.header_line is None else table.header_line + 1
        if path and path[:-1] in self.tables:
            span = self.tables[path[:-1]].keys.get(str(path[-1]))
            return span.line + 1 if span else None
        return None

    def _scan(self) -> None:
        text, i, n = self.text, 0, len(self.text)
        current: TablePath = ()
        aot: dict[TablePath, int] = {}
        while i < n:
            i = self._skip_blank(i)
            if i >= n:
                break
            if text[i] == "\n":
                i += 1
                continue
            if text[i] == "#":
                i = self._line_end(i)
                continue
            if text[i] == "[":
                double = text.startswith("[[", i)
                j = i + (2 if double else 1)
                parts, j = self._key(j)
                close = text.find("]]" if double else "]", j)
                end = self._line_end(close)
                current = self._resolve(parts, double, aot)
                self.tables[current] = TableSpan(text.count("\n", 0, i), min(end + 1, n))
                i = end
                continue
            i = self._key_value(i, current)

    def _key_value(self, i: int, current: TablePath) -> int:
        """Map one `key = value` line (or skip a line that is not one); returns where the next line starts."""
        text, n = self.text, len(self.text)
        line = text.count("\n", 0, i)
        parts, j = self._key(i)
        key_end = j
        while key_end > i and text[key_end - 1] in " \t":
            key_end -= 1
        j = self._skip_blank(j)
        if j < n and text[j] == "=":
            start = self._skip_blank(j + 1)
            end = self._value_end(start)
            span = KeySpan(line, start, end, i, key_end)
            self.tables.setdefault(current, TableSpan(None, 0)).keys[".".join(parts)] = span
            return self._line_end(end)
        return self._line_end(i)

    def _resolve(self, parts: list[str], double: bool, aot: dict[TablePath, int]) -> TablePath:
        path: TablePath = ()
        for part in parts[:-1]:
            path += (part,)
            if path in aot:
                path += (aot[path],)
        path += (parts[-1],)
        if double:
            aot[path] = aot.get(path, -1) + 1
            path += (aot[path],)
        return path

    def _skip_blank(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in " \t\r":
            i += 1
        return i

    def _line_end(self, i: int) -> int:
        end = self.text.find("\n", max(i, 0))
        return len(self.text) if end < 0 else end

    def _key(self, i: int) -> tuple[list[str], int]:
        parts: list[str] = []
        text = self.text
        while i < len(text):
            i = self._skip_blank(i)
            if i < len(text) and text[i] in "\"'":
                end = self._string_end(i)
                raw = text[i:end]
                parts.append(tomllib.loads(f"k = {raw}")["k"] if raw else "")
                i = end
            else:
                m = re.compile(r"[A-Za-z0-9_-]+").match(text, i)
                if not m:
                    break
                parts.append(m.group(0))
                i = m.end()
            i = self._skip_blank(i)
            if i < len(text) and text[i] == ".":
                i += 1
                continue
            break
        return parts, i

    def _string_end(self, i: int) -> int:
        text = self.text
        quote = text[i]
        if text.startswith(quote * 3, i):
            j = i + 3
            while True:
                k = text.find(quote * 3, j)
                if k < 0:
                    return len(text)
                if quote == '"' and _escaped(text, k):
                    j = k + 1
                    continue
                while text.startswith(quote, k + 3):  # up to two quotes may close a multi-line string
                    k += 1
                return k + 3
        j = i + 1
        while j < len(text) and text[j] != "\n":
            if quote == '"' and text[j] == "\\":
                j += 2
                continue
            if text[j] == quote:
                return j + 1
            j += 1
        return j

    def _value_end(self, i: int) -> int:
        text, depth, j = self.text, 0, i
        while j < len(text):
            c = text[j]
            if c in "\"'":
                j = self._string_end(j)
                if depth == 0:
                    return j
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return j + 1
            elif c == "#" and depth > 0:
                j = self._line_end(j)
                continue
            elif depth == 0 and c in "#\n":
                break
            j += 1
        return len(text[:j].rstrip(" \t\r")) if depth == 0 else j


def _escaped(text: str, k: int) -> bool:
    backslashes = 0
    while k - backslashes - 1 >= 0 and text[k - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


# ----------------------------------------------------------------------------- planned edits


@dataclass(frozen=True)
class Change:
    """One intended change in one table: set `key` to `value` (added when the table lacks it), or rename `key`
    to `rename_to` (value and comments kept). `literal` is the TOML text to write (default: `toml_value(value)`);
    `within` are text substitutions inside the value's current text, tried first so a multi-line string keeps its
    lines (the new value must still parse to `value`)."""

    table: TablePath
    key: str
    value: Any = None
    rename_to: str | None = None
    literal: str | None = None
    within: tuple[tuple[str, str], ...] = ()

    def place(self) -> str:
        parts = [f"[{p}]" if isinstance(p, int) else toml_key(str(p)) for p in (*self.table, self.key)]
        return "".join(p if p.startswith("[") or i == 0 else "." + p for i, p in enumerate(parts))


def _table(data: Any, path: TablePath) -> dict[str, Any]:
    for part in path:
        data = data[part]
    if not isinstance(data, dict):
        raise KeyError(path)
    return data


def expected_document(data: dict[str, Any], changes: Iterable[Change]) -> dict[str, Any]:
    """`data` with exactly these changes made: what the edited file must parse to."""
    want = copy.deepcopy(data)
    for change in changes:
        table = _table(want, change.table)
        if change.rename_to is not None:
            table[change.rename_to] = table.pop(change.key)
        else:
            table[change.key] = change.value
    return want


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _substituted(current: str, within: Sequence[tuple[str, str]]) -> str | None:
    """`current` with each `old` (found exactly once) replaced by `new`; None when one is not found once."""
    for old, new in within:
        if current.count(old) != 1:
            return None
        current = current.replace(old, new)
    return current


@dataclass
class _Span:
    start: int
    end: int
    text: str
    label: str


class TomlEdit:
    """Changes to one TOML file, planned on the bytes a check read."""

    def __init__(self, path: Path, changes: Sequence[Change], seen: bytes | None = None) -> None:
        self.path = path
        self.changes = list(changes)
        raw = read_bytes(path) if seen is None else seen
        if raw is None:
            raise FixError(f"{path} does not exist")
        self.seen = raw
        try:
            self.text = raw.decode("utf-8")
            self.data = tomllib.loads(self.text)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FixError(f"{path} is not readable TOML ({exc}); edit it by hand") from None
        self.layout = TomlLayout(self.text)
        self.spans = [self._span(c) for c in self.changes]
        self.new_text = self._render()

    def _line_label(self, k: KeySpan) -> str:
        return f"line {k.line + 1}"

    def _span(self, change: Change) -> _Span:
        table = self.layout.tables.get(change.table)
        where = change.place()
        if table is None:
            raise FixError(f"{self.path}: no table for {where} that a line edit can reach; edit it by hand")
        k = table.keys.get(change.key)
        if change.rename_to is not None:
            if k is None:
                raise FixError(f"{self.path}: `{where}` is not a plain `key = value` line; rename it by hand")
            label = f"{self._line_label(k)}: rename `{change.key}` to `{change.rename_to}` (value and comment kept)"
            return _Span(k.key_start, k.key_end, toml_key(change.rename_to), label)
        literal = change.literal if change.literal is not None else toml_value(change.value)
        if k is not None:
            old = self.text[k.start:k.end]
            new = _substituted(old, change.within) if change.within else None
            if new is not None:
                subs = "; ".join(_sub_label(a, b) for a, b in change.within)
                return _Span(k.start, k.end, new, f"{self._line_label(k)}: in {where}: {subs}")
            label = f"{self._line_label(k)}: {where} = {_short(old)} -> {_short(literal)}"
            return _Span(k.start, k.end, literal, label)
        return self._insertion(change, table, literal)

    def _insertion(self, change: Change, table: TableSpan, literal: str) -> _Span:
        """A new `key = value` line after the table's last key (or its header), with that key's indent."""
        text, nl = self.text, _newline(self.text)
        if table.keys:
            last = max(table.keys.values(), key=lambda k: k.end)
            line_start = text.rfind("\n", 0, last.key_start) + 1
            indent = text[line_start:last.key_start]
            at = text.find("\n", last.end)
            at = len(text) if at < 0 else at + 1
            after = f"after line {last.line + 1}"
        else:
            indent, at = "", table.header_end
            after = f"after line {table.header_line + 1}" if table.header_line is not None else "at the top"
        prefix = nl if at > 0 and not text[:at].endswith("\n") else ""
        line = f"{prefix}{indent}{toml_key(change.key)} = {literal}{nl}"
        where = f" in {_table_place(change.table)}" if change.table else ""
        return _Span(at, at, line, f"add `{toml_key(change.key)} = {literal}` {after}{where}")

    def _render(self) -> str:
        spans = sorted(self.spans, key=lambda s: (s.start, s.end))
        for a, b in zip(spans, spans[1:]):
            if b.start < a.end:
                raise FixError(f"{self.path}: two changes touch the same text; edit it by hand")
        new = self.text
        for s in reversed(spans):
            new = new[:s.start] + s.text + new[s.end:]
        want = expected_document(self.data, self.changes)
        try:
            got = tomllib.loads(new)
        except tomllib.TOMLDecodeError as exc:
            raise FixError(f"{self.path}: the edit would not parse ({exc}); nothing was changed") from None
        if got != want:
            raise FixError(f"{self.path}: the edit would change more than intended; nothing was changed. Make it by "
                           "hand: " + "; ".join(c.place() for c in self.changes))
        return new

    def commands(self) -> list[str]:
        """What `--dry-run` shows."""
        return [f"edit {self.path}: {s.label}" for s in self.spans] + \
            [f"back up {self.path.name} to {self.path.name}.bak-<timestamp> first"]

    def current(self) -> TomlEdit:
        """This edit, planned again on the file as it is now when only this run's own earlier fixes changed it
        (a substitution inside a value is made in the value as it is now); FixError for anyone else's edit."""
        now = read_bytes(self.path)
        if now == self.seen:
            return self
        if now is None or not own_changes(self.path, self.seen, now):
            raise FixError(f"{self.path} changed since the check read it; not touching it. Run lorasetup again.")
        try:
            data = tomllib.loads(now.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FixError(f"{self.path} is not readable TOML ({exc})") from None
        return TomlEdit(self.path, [self._rebased(c, data) for c in self.changes], now)

    def _rebased(self, change: Change, data: dict[str, Any]) -> Change:
        if change.rename_to is not None:
            return change
        try:
            before, now = _table(self.data, change.table).get(change.key), _table(data, change.table).get(change.key)
        except (KeyError, IndexError, TypeError):
            raise FixError(f"{self.path}: {change.place()} moved since the check read it; run again") from None
        if change.within and isinstance(now, str):
            value = _substituted(now, change.within)
            if value is not None:
                return Change(change.table, change.key, value, within=change.within)
        if now != before:
            raise FixError(f"{self.path}: {change.place()} changed since the check read it; run lorasetup again")
        return change

    def apply(self) -> Path | None:
        """Write the planned text if the file still holds the bytes the check read (or only this run's own fixes
        changed it since); returns the backup."""
        edit = self.current()
        return guarded_write(edit.path, edit.seen, edit.new_text.encode("utf-8"))


class TextRepair:
    """Replacements in a TOML file that does not parse yet (a syntax error a check knows how to mend): the result
    must parse, and each replaced value must read back as the value it was meant to be."""

    def __init__(self, path: Path, replacements: Sequence[tuple[int, int, str, Any, str]], seen: bytes) -> None:
        """`replacements`: (start, end, new text, the value it must parse to, label) in `seen` decoded."""
        self.path, self.seen = path, seen
        text = seen.decode("utf-8")
        self.labels = [r[4] for r in replacements]
        for _, _, new, value, label in replacements:
            try:
                ok = tomllib.loads(f"v = {new}")["v"] == value
            except tomllib.TOMLDecodeError:
                ok = False
            if not ok:
                raise FixError(f"{path}: {label} would not read back as intended; edit it by hand")
        for start, end, new, _, _ in sorted(replacements, key=lambda r: r[0], reverse=True):
            text = text[:start] + new + text[end:]
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FixError(f"{path}: still not valid TOML after the repair ({exc}); edit it by hand") from None
        self.new_text = text

    def commands(self) -> list[str]:
        return [f"edit {self.path}: {label}" for label in self.labels] + \
            [f"back up {self.path.name} to {self.path.name}.bak-<timestamp> first"]

    def apply(self) -> Path | None:
        return guarded_write(self.path, self.seen, self.new_text.encode("utf-8"))


def _table_place(table: TablePath) -> str:
    """("datasets", 0, "subsets", 1) -> "datasets[0].subsets[1]"."""
    out = ""
    for part in table:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + toml_key(str(part)))
    return out


def _sub_label(old: str, new: str) -> str:
    if not new.strip():
        return f"{_short(old)} -> (removed)"
    if new.startswith(old):
        return f"append {_short(new[len(old):].strip())}"
    return f"{_short(old)} -> {_short(new)}"


def _short(text: str, limit: int = 48) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def plan_edits(edits: Iterable[tuple[Path, Sequence[Change]]], seen: dict[Path, bytes] | None = None) -> list[TomlEdit]:
    """One TomlEdit per file (changes to the same file merged); raises FixError when one cannot be planned."""
    merged: dict[Path, list[Change]] = {}
    for path, changes in edits:
        merged.setdefault(path, []).extend(changes)
    return [TomlEdit(path, changes, (seen or {}).get(path)) for path, changes in merged.items()]


def edit_fix(description: str, edits: Sequence[TomlEdit | TextRepair], safe: bool = True) -> Fix:
    """A Fix that applies `edits` (several files: all are checked unchanged before the first is written)."""
    commands = [line for e in edits for line in e.commands()]

    def apply() -> None:
        current = [e.current() if isinstance(e, TomlEdit) else e for e in edits]  # refuses before any write
        for e in current:
            if isinstance(e, TextRepair) and read_bytes(e.path) != e.seen:
                raise FixError(f"{e.path} changed since the check read it; not touching it. Run lorasetup again.")
        for e in current:
            e.apply()
    return Fix(description, commands, apply, safe=safe)


def try_edit_fix(description: str, edits: Iterable[tuple[Path, Sequence[Change]]], safe: bool = True,
                 seen: dict[Path, bytes] | None = None) -> tuple[Fix | None, str | None]:
    """The fix, or (None, why it cannot be made safely) so the check can show a hint instead."""
    try:
        return edit_fix(description, plan_edits(edits, seen), safe), None
    except FixError as exc:
        return None, str(exc)
