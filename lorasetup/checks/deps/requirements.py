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
from packaging.specifiers import SpecifierSet
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
# The build a local version label or a PyTorch wheel index names (`+cu128`, `+rocm6.3`, `+xpu`, `+cpu`; `.../whl/cu128`)
BUILD_LABELS = (("cu", "cuda"), ("rocm", "rocm"), ("xpu", "xpu"), ("cpu", "cpu"))
TORCH_INDEX = re.compile(r"download\.pytorch\.org/whl/(?:nightly/|test/)?([a-z]+[\d.]*)")
# Wheels built for one torch build (CUDA, ROCm, CPU, MPS): a pin of one in a platform file is for that file's
# device, and pip would fetch a mismatched build or replace torch itself, gigabytes, so fixes only print them
BUILD_SPECIFIC = ("torch", "torchvision", "torchaudio", "xformers")


@dataclass(frozen=True)
class Machine:
    """What kohya_ss's setup looks at to pick its platform requirement file."""

    sys_platform: str
    machine: str
    nvidia_smi: bool = False  # `nvidia-smi` on PATH
    rocm: bool = False        # `rocminfo` on PATH or /opt/rocm/bin/rocminfo
    runpod: bool = False      # RUNPOD_POD_ID or RUNPOD_API_KEY set
    xpu: bool = False         # setup.sh --use-ipex; lorasetup's `device = "xpu"` says the same


def kohya_platform_file(m: Machine) -> tuple[str | None, str]:
    """The platform requirement file kohya_ss's own setup installs on this machine, and why.

    kohya_ss 45088f04: setup.sh `install_python_dependencies` (the same order as gui.sh) on Linux and macOS,
    setup/setup_windows.py `install_kohya_ss_torch2` on Windows. Each platform file `-r`s requirements.txt.
    """
    if m.sys_platform.startswith("win"):
        return "requirements_pytorch_windows.txt", "kohya_ss's setup/setup_windows.py installs it on Windows"
    if m.sys_platform.startswith("darwin"):
        arch = "arm64" if m.machine.lower() == "arm64" else "amd64"
        return f"requirements_macos_{arch}.txt", f"kohya_ss's setup.sh on macOS with `uname -m` = {m.machine}"
    if not m.sys_platform.startswith("linux"):
        return None, f"kohya_ss's setup has no platform file for {m.sys_platform}"
    why = "kohya_ss's setup.sh on Linux"
    if m.runpod:
        return "requirements_runpod.txt", f"{why} when RUNPOD_POD_ID or RUNPOD_API_KEY is set"
    if m.xpu:
        return "requirements_ipex_xpu.txt", f"{why} with --use-ipex (device xpu)"
    if m.nvidia_smi:
        return "requirements_linux.txt", f"{why} when nvidia-smi is on PATH"
    if m.rocm:
        return "requirements_linux_rocm.txt", f"{why} when rocminfo is found (ROCm)"
    return "requirements_linux.txt", f"{why} without nvidia-smi or rocminfo (its default)"


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

    @property
    def local_labels(self) -> list[str]:
        """The local version labels the pin names (`torch==2.7.0+cu128`: ["cu128"])."""
        return [s.version.partition("+")[2] for s in self.req.specifier if "+" in s.version]

    @property
    def build(self) -> str | None:
        """The device a local label's build is for (cuda, rocm, xpu, cpu), or None."""
        return next(filter(None, map(build_label, self.local_labels)), None)

    @property
    def release(self) -> SpecifierSet:
        """The pin without its local labels: `==2.7.0+cu128` allows every build of 2.7.0 (+cu126, +cpu)."""
        return SpecifierSet(",".join(f"{s.operator}{s.version.partition('+')[0]}" for s in self.req.specifier))


def build_label(label: str) -> str | None:
    """cuda, rocm, xpu or cpu for a build label (`cu128`, `rocm6.3`), else None."""
    return next((dev for prefix, dev in BUILD_LABELS if label.lower().startswith(prefix)), None)


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
    indexes: dict[Path, list[str]] = field(default_factory=dict)  # the index URLs each file names
    platform_note: str = ""  # which platform file was read and why (kohya_ss)

    def build_of(self, pin: Pin) -> str | None:
        """The device a pin's build is for: its local label (`+cu128`), or for torch and the wheels built
        against it, the PyTorch index its file names (`--extra-index-url .../whl/cu128`)."""
        if pin.build or pin.name not in BUILD_SPECIFIC:
            return pin.build
        found = (TORCH_INDEX.search(url) for url in self.indexes.get(pin.file, []))
        return next((build_label(m.group(1)) for m in found if m and build_label(m.group(1))), None)

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
        content = read_text(path, boms=True)  # pip's auto_decode: a BOM picks UTF-8/16/32, else UTF-8
    except FileProblem as exc:
        result.unreadable.append(exc.summary)
        return
    result.files.append(path)
    for number, line in logical_lines(content):
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
            result.indexes.setdefault(path, []).extend([value] if value else [])
        i += used


def checkout_files(root: Path, layout: str | None, machine: Machine) -> tuple[list[Path], str]:
    """The requirement files of a checkout, and which platform file was used and why: sd-scripts'
    requirements.txt; for kohya_ss its requirements.txt plus the platform file its setup picks here."""
    files = [root / "requirements.txt"]
    if layout != "kohya_ss":
        return [f for f in files if os.path.lexists(f)], ""  # a pipe or folder by that name is reported, not skipped
    name, why = kohya_platform_file(machine)
    if name is None:
        note = why
    elif (root / name).is_file():
        files.append(root / name)
        note = f"platform file {name}: {why}"
    else:
        note = f"platform file {name} ({why}) is not in this checkout: only requirements.txt was read"
    return [f for f in files if os.path.lexists(f)], note
