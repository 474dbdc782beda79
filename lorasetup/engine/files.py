"""One guarded way to read the files a person points lorasetup at (configs, images, captions, model headers,
requirement and prompt files, the accelerate config).

Why: a named pipe where an image is expected makes `open()` wait until some program writes to it (lorasetup
would hang like sd-scripts does); /dev/zero never ends; a 1 GB "caption" is not one; a deeply nested TOML makes
Python's parsers raise RecursionError. So every reader here looks at the file's kind with os.stat before opening
it (regular files only), opens it with O_NONBLOCK (a pipe swapped in after the stat cannot block the open) and
checks the open file's kind again with fstat, reads at most a limit, and turns each problem into a FileProblem:
a CheckFailed that names the file, what is wrong with it and the fix, never a traceback.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from lorasetup.engine.errors import CheckFailed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MIB = 1 << 20
TEXT_LIMIT = 16 * MIB  # configs, captions, prompt and requirement files: far above any real one
DATA_LIMIT = 512 * MIB  # a fine-tuning metadata file holds one entry per image
MAX_DEPTH = 100  # no sd-scripts setting nests more than a few levels; Python's parsers give up near 500
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_TOML_PLACE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)")


class FileProblem(CheckFailed):
    """A file lorasetup will not or cannot read. `problem` says what is wrong without the path; `kind` is one of
    missing, loop, permission, not-regular, vanished, too-large, encoding, syntax, too-deep, unreadable."""

    def __init__(self, path: Path | str, problem: str, hint: str | None = None, *, kind: str = "unreadable",
                 line: int | None = None, column: int | None = None, file_kind: str = "") -> None:
        where = f"{path}" + (f", line {line}" if line else "") + (f", column {column}" if line and column else "")
        super().__init__(f"{where}: {problem}", hint)
        self.path, self.problem, self.kind, self.line, self.column = Path(path), problem, kind, line, column
        self.file_kind = file_kind  # for not-regular: 'a named pipe (FIFO)', 'a folder', ...


def kind_name(mode: int) -> str:
    """'a regular file', 'a named pipe (FIFO)', 'a folder', ... for a stat mode."""
    return "a regular file" if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _not_regular(path: Path | str, mode: int, swapped: bool = False) -> FileProblem:
    kind = kind_name(mode)
    why = {stat.S_IFIFO: "reading a pipe waits for a program to write to it, possibly forever",
           stat.S_IFSOCK: "a socket cannot be read like a file",
           stat.S_IFCHR: "a device like /dev/zero or /dev/null has no file contents",
           stat.S_IFBLK: "a disk device is not a file",
           stat.S_IFDIR: "a folder cannot be read as a file"}.get(stat.S_IFMT(mode), "")
    when = " (it was swapped in while lorasetup opened it)" if swapped else ""
    return FileProblem(path, f"is {kind}, not a regular file{when}; lorasetup did not read it ({why})",
                       f"put the real file at {path} (`ls -l` shows the kind: p pipe, s socket, c/b device, d folder)",
                       kind="not-regular", file_kind=kind)


def _os_problem(path: Path | str, exc: OSError) -> FileProblem:
    if exc.errno == errno.ELOOP:
        return FileProblem(path, "is a symlink loop (links that point back at each other)",
                           f"point the link at the real file: `ls -l {path}` shows where it goes", kind="loop")
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return FileProblem(path, f"is a broken symlink (to {os.readlink(path)}, which does not exist)",
                               "point the link at an existing file, or replace it with the file", kind="missing")
        return FileProblem(path, "does not exist", "check the path (a typo, or a file moved since?)", kind="missing")
    if isinstance(exc, PermissionError):
        return FileProblem(path, "cannot be read: permission denied",
                           f"give your user read access (`ls -l {path}`; `chmod u+r` the file, `u+x` its folders)",
                           kind="permission")
    return FileProblem(path, f"cannot be read: {exc.strerror or exc}", kind="unreadable")


def describe(path: Path | str) -> str:
    """What is at `path`, for messages: 'is a regular file', 'is a named pipe (FIFO)', 'is a folder', 'does not
    exist', 'is a broken symlink (to ...)', 'is a symlink loop (...)'."""
    try:
        return f"is {kind_name(os.stat(path).st_mode)}"
    except OSError as exc:
        return _os_problem(path, exc).problem


def resolved(path: Path) -> Path:
    """`path` made absolute with its symlinks followed; a symlink loop stays in the path for its reader to report
    (Path.resolve raises RuntimeError on one before Python 3.13)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def kind_of(path: Path | str) -> str | None:
    """The kind of what is at `path` ('a named pipe (FIFO)', ...), following symlinks; None when unreachable."""
    try:
        return kind_name(os.stat(path).st_mode)
    except OSError:
        return None


def stat_regular(path: Path | str) -> os.stat_result:
    """The stat of a regular file (symlinks followed); FileProblem for anything else, before any open."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_problem(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


@contextmanager
def open_regular(path: Path | str) -> Iterator[BinaryIO]:
    """Open a regular file for binary reading without ever blocking: stat first, O_NONBLOCK, fstat again."""
    stat_regular(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise FileProblem(path, "vanished while lorasetup read it (moved or deleted meanwhile?)",
                          "run lorasetup again once nothing is changing the files", kind="vanished") from None
    except OSError as exc:
        raise _os_problem(path, exc) from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, swapped=True)
        yield fh


def read_bytes(path: Path | str, limit: int = TEXT_LIMIT) -> bytes:
    """The whole file, at most `limit` bytes (FileProblem above it: nothing that large is read)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise FileProblem(path, f"is {max(size, len(data)) / MIB:,.1f} MiB, over the {limit / MIB:,.0f} MiB "
                                "lorasetup reads of such a file", "is it really the file meant here? point "
                          "lorasetup at the right one (a mix-up with a model or an archive, say)", kind="too-large")
    return data


def _decode_problem(path: Path | str, raw: bytes, exc: UnicodeDecodeError) -> FileProblem:
    hint = "save it as UTF-8 (without BOM); e.g. `iconv -f <its encoding> -t UTF-8 in > out`"
    for bom, name in _BOMS:
        if raw.startswith(bom) and name != "utf-8-sig":
            return FileProblem(path, f"is {name.upper()} text (it starts with the byte-order mark "
                                     f"{bom.hex(' ').upper()}), not UTF-8", hint, kind="encoding")
    if _utf16_without_bom(raw):
        return FileProblem(path, "looks like UTF-16 text (every other byte is 0), not UTF-8", hint, kind="encoding")
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - raw.rfind(b"\n", 0, exc.start)
    return FileProblem(path, f"is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}; latin-1 or "
                             "Windows-1252 text?)", hint, kind="encoding", line=line, column=column)


def _utf16_without_bom(raw: bytes) -> bool:
    head = raw[:64]
    return len(head) >= 4 and any(head[i::2].count(0) > len(head[i::2]) // 2 for i in (0, 1))


def _no_nul(path: Path | str, text: str, what: str) -> None:
    """Text formats never hold NUL; UTF-16 without a byte-order mark decodes as UTF-8 full of them."""
    at = text.find("\0")
    if at >= 0:
        guess = "UTF-16 text without a byte-order mark" if _utf16_without_bom(text[:64].encode()) else "not text"
        raise FileProblem(path, f"holds a NUL character at offset {at} ({guess}?), so it is not {what}",
                          "save it as UTF-8 text", kind="encoding")


def decode(path: Path | str, raw: bytes, boms: bool = False) -> str:
    """Strict UTF-8 (a UTF-8 BOM stays in the text as U+FEFF); with `boms`, as pip reads requirement files:
    a byte-order mark picks UTF-8, UTF-16 or UTF-32 and is dropped."""
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8") if boms else "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _decode_problem(path, raw, exc) from None


def read_text(path: Path | str, limit: int = TEXT_LIMIT, boms: bool = False) -> str:
    """The file as text (see `decode`); newlines are kept as they are."""
    return decode(path, read_bytes(path, limit), boms)


def read_source(path: Path | str, limit: int = TEXT_LIMIT) -> str:
    """A file read as UTF-8 with undecodable bytes replaced: the checkout's sources and config snippets, where
    lorasetup only looks for names and the interpreter reports a bad encoding itself."""
    return read_bytes(path, limit).decode("utf-8", "replace")


def _too_deep(path: Path | str, depth: str, where: str = "") -> FileProblem:
    return FileProblem(path, f"nests values {depth} levels deep{where}: no setting of sd-scripts nests more than a "
                             "few (its own TOML and JSON readers stop with RecursionError near 500 levels)",
                       "remove the nested brackets or braces; is this the file you meant?", kind="too-deep")


def check_depth(path: Path | str, data: Any, limit: int = MAX_DEPTH) -> None:
    """FileProblem when parsed data nests deeper than `limit` (walked without recursion)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, place = stack.pop()
        if depth > limit:
            raise _too_deep(path, f"more than {limit}", f" (at {place[:80] or 'the top'}...)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, f"{place}.{k}" if place else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{place}[{i}]") for i, v in enumerate(value))


def parse_toml(path: Path | str, text: str) -> dict[str, Any]:
    """TOML text -> data, or a FileProblem with the line and column."""
    if text.startswith("\ufeff"):
        raise FileProblem(path, "starts with a UTF-8 byte-order mark (EF BB BF), which TOML readers (sd-scripts' "
                                "too) reject as an invalid character", "save it as UTF-8 without BOM",
                          kind="encoding", line=1, column=1)
    _no_nul(path, text, "TOML")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_PLACE.search(str(exc))
        line, column = (int(found.group(1)), int(found.group(2))) if found and found.group(1) else (None, None)
        raise FileProblem(path, f"is not valid TOML: {_TOML_PLACE.sub('', str(exc))}", "fix the syntax at the "
                          "place named", kind="syntax", line=line, column=column) from None
    except RecursionError:
        raise _too_deep(path, "hundreds of") from None
    check_depth(path, data)
    return data


def parse_json(path: Path | str, text: str) -> Any:
    """JSON text -> data, or a FileProblem with the line and column."""
    if text.startswith("\ufeff"):
        raise FileProblem(path, "starts with a UTF-8 byte-order mark (EF BB BF), which Python's JSON reader "
                                "(sd-scripts' too) rejects", "save it as UTF-8 without BOM", kind="encoding",
                          line=1, column=1)
    _no_nul(path, text, "JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileProblem(path, f"is not valid JSON: {exc.msg}", "fix the syntax at the place named",
                          kind="syntax", line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise _too_deep(path, "hundreds of") from None
    check_depth(path, data)
    return data


def read_toml(path: Path | str, limit: int = TEXT_LIMIT) -> dict[str, Any]:
    return parse_toml(path, read_text(path, limit))


def read_json(path: Path | str, limit: int = TEXT_LIMIT) -> Any:
    return parse_json(path, read_text(path, limit))


def json_object(path: Path | str) -> dict[str, Any] | None:
    """A JSON file's top-level object, or None when it is missing, unreadable or not an object (for optional
    files: a diffusers folder's configs, another process's answer)."""
    try:
        value = read_json(path)
    except FileProblem:
        return None
    return value if isinstance(value, dict) else None
