"""The checkout's requirement files, read the way pip reads them, parsed with `packaging`.

One requirement per logical line (`\\` continues a line, `#` after whitespace starts a comment), `-r`
includes relative to the including file, options skipped. Environment markers are evaluated for the
training interpreter's environment. Lines lorasetup cannot compare with an installed version (URLs,
paths, `-e`, lines pip itself would reject) are kept with the reason, so a report can say what it did not
check.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from lorasetup.engine.files import FileProblem, read_text, resolved

INCLUDE = ("-r", "--requirement")
CONSTRAINT = ("-c", "--constraint")
EDITABLE = ("-e", "--editable")
# pip options that take a value (`--opt value` or `--opt=value`); kept for commands that install torch
VALUE_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host",
                 "--no-binary", "--only-binary", "--use-feature", "--hash", "--config-settings",
                 "--global-option")
INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--pre", "--no-index",
                 "--trusted-host")
COMMENT = re.compile(r"(^|\s+)#.*$")

# The platform requirement file kohya_ss installs on each machine (kohya_ss setup.sh / gui.sh for Linux
# and macOS, setup/setup_windows.py for Windows); it `-r`s the base requirements.txt.
KOHYA_PLATFORM_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("darwin", "arm64"): ("requirements_macos_arm64.txt",),
    ("darwin", "x86_64"): ("requirements_macos_amd64.txt",),
    ("linux", ""): ("requirements_linux.txt",),
    ("win32", ""): ("requirements_pytorch_windows.txt", "requirements_windows.txt"),
}


@dataclass(frozen=True)
class Pin:
    """One requirement line that applies: what it requires and where it says so."""

    req: Requirement
    file: Path
    line: int

    @property
    def name(self) -> str:
        return canonicalize_name(self.req.name)

    @property
    def place(self) -> str:
        return f"{self.file.name}:{self.line}"

    @property
    def spec(self) -> str:
        """What `pip install` gets for this line: name, extras and version, without the marker."""
        extras = f"[{','.join(sorted(self.req.extras))}]" if self.req.extras else ""
        return f"{self.req.name}{extras}{self.req.specifier}"

    def allows(self, version: str) -> bool:
        """True when `version` satisfies the pin (pre-releases allowed: pip installed them on purpose)."""
        return self.req.specifier.contains(version, prereleases=True)


@dataclass(frozen=True)
class Unchecked:
    """A line whose version cannot be compared, and why."""

    file: Path
    line: int
    text: str
    reason: str

    @property
    def place(self) -> str:
        return f"{self.file.name}:{self.line}"


@dataclass
class RequirementSet:
    """Every requirement of some files (and their includes) for one marker environment."""

    files: list[Path] = field(default_factory=list)
    pins: list[Pin] = field(default_factory=list)
    excluded: list[Pin] = field(default_factory=list)
    unchecked: list[Unchecked] = field(default_factory=list)
    editables: list[Unchecked] = field(default_factory=list)
    index_options: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # files pip could not read either, with the reason

    def find(self, dist: str) -> Pin | None:
        """The first applicable pin for a distribution name (any spelling)."""
        name = canonicalize_name(dist)
        return next((p for p in self.pins if p.name == name), None)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, content) of each logical line: continuations joined, comments removed."""
    out: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not buffer:
            start = number
        if raw.endswith("\\") and not COMMENT.match(raw):
            buffer += raw[:-1]
            continue
        content = COMMENT.sub("", buffer + raw).strip()
        if content:
            out.append((start, content))
        buffer = ""
    if buffer.strip():
        out.append((start, COMMENT.sub("", buffer).strip()))
    return out


def split_option(tokens: list[str]) -> tuple[str, str | None, int]:
    """The option at tokens[0], its value if it takes one, and how many tokens it used."""
    head = tokens[0]
    for opt in (*INCLUDE, *CONSTRAINT, *EDITABLE, *VALUE_OPTIONS):
        if head == opt:
            return opt, (tokens[1] if len(tokens) > 1 else None), 2
        if opt.startswith("--") and head.startswith(opt + "="):
            return opt, head[len(opt) + 1:], 1
        if len(opt) == 2 and head.startswith(opt) and len(head) > 2:
            return opt, head[2:], 1
    return head.split("=", 1)[0], None, 1


def parse_files(paths: list[Path], env: Mapping[str, str]) -> RequirementSet:
    """Read `paths` (and what they include) once each; markers evaluated against `env`."""
    result = RequirementSet()
    seen: set[Path] = set()
    for path in paths:
        _parse(resolved(path), env, result, seen)
    return result


def _parse(path: Path, env: Mapping[str, str], result: RequirementSet, seen: set[Path]) -> None:
    if path in seen:
        return
    seen.add(path)
    try:
        text = read_text(path, boms=True)  # pip's auto_decode: a BOM picks UTF-8/16/32, else UTF-8
    except FileProblem as exc:
        result.unreadable.append(exc.summary)
        return
    result.files.append(path)
    for number, line in logical_lines(text):
        try:
            tokens = shlex.split(line, posix=True)
        except ValueError:
            tokens = line.split()
        if tokens and tokens[0].startswith("-"):
            _option_line(path, number, line, tokens, env, result, seen)
            continue
        # pip: the requirement is everything before the first option on the line (e.g. `--hash=...`)
        words = line.split()
        cut = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        text = " ".join(words[:cut])
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            looks_like_url = "://" in text or text.startswith((".", "/", "~")) or text.endswith((".whl", ".zip"))
            reason = "a URL or path, not a version pin" if looks_like_url else \
                f"not a valid requirement (pip rejects it too): {str(exc).splitlines()[0]}"
            result.unchecked.append(Unchecked(path, number, line, reason))
            continue
        if req.url:
            result.unchecked.append(Unchecked(path, number, line, f"{req.name} comes from a URL: {req.url}"))
            continue
        pin = Pin(req, path, number)
        try:
            applies = req.marker is None or req.marker.evaluate(dict(env))
        except UndefinedEnvironmentName as exc:
            result.unchecked.append(Unchecked(path, number, line, f"marker cannot be evaluated: {exc}"))
            continue
        (result.pins if applies else result.excluded).append(pin)


def _option_line(path: Path, number: int, line: str, tokens: list[str], env: Mapping[str, str],
                 result: RequirementSet, seen: set[Path]) -> None:
    i = 0
    while i < len(tokens):
        opt, value, used = split_option(tokens[i:])
        if opt in INCLUDE and value:
            included = resolved(path.parent / value)
            if os.path.lexists(included):
                _parse(included, env, result, seen)
            else:
                result.unchecked.append(Unchecked(path, number, line, f"included file {included} not found"))
        elif opt in CONSTRAINT:
            result.unchecked.append(Unchecked(path, number, line, "a constraints file (not checked)"))
        elif opt in EDITABLE:
            result.editables.append(Unchecked(path, number, line, f"editable install of {value}"))
        elif opt in INDEX_OPTIONS:
            result.index_options += [opt] + ([value] if value is not None else [])
        i += used


def checkout_files(root: Path, layout: str | None, sys_platform: str, machine: str) -> list[Path]:
    """The requirement files of a checkout: sd-scripts' requirements.txt; for kohya_ss its requirements.txt
    plus the platform file for this machine."""
    files = [root / "requirements.txt"]
    if layout == "kohya_ss":
        machine = machine.lower()
        for (plat, arch), names in KOHYA_PLATFORM_FILES.items():
            if sys_platform.startswith(plat) and arch in ("", machine):
                found = next((root / n for n in names if (root / n).is_file()), None)
                if found is not None:
                    files.append(found)
                break
    return [f for f in files if os.path.lexists(f)]  # a pipe or folder by that name is reported, not skipped
