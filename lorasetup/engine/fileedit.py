"""What every fix that rewrites a person's file shares: the bytes the check saw, a refusal when the file changed
since, a backup next to it, and an atomic write (a crash leaves the old file or the new one, never half of one).

The TOML-aware part (targeted edits that keep comments and layout) is lorasetup.engine.tomledit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from lorasetup.engine import files
from lorasetup.engine.result import FixError

TEMP_SUFFIX = ".lorasetup-tmp"
_WRITTEN: dict[Path, list[tuple[str, str]]] = {}  # this process's own rewrites: (digest before, digest after)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def own_changes(path: Path, seen: bytes, current: bytes) -> bool:
    """True when `current` is what this process's own guarded writes made of `seen` (an earlier fix of the same
    run), so a later fix may be planned again on it; any other difference is someone else's edit."""
    state, target = _digest(seen), _digest(current)
    steps = list(_WRITTEN.get(path.resolve(), []))
    while state != target:
        step = next((s for s in steps if s[0] == state), None)
        if step is None:
            return False
        steps.remove(step)
        state = step[1]
    return True


def backup(path: Path) -> Path:
    """Copy `path` next to itself as `<name>.bak-<timestamp>` (never overwriting an older backup)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    try:
        shutil.copy2(path, target)
    except OSError as exc:
        raise FixError(f"cannot back up {path} to {target}: {exc.strerror}") from None
    return target


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes now, None when it does not exist (what a check records before offering a fix). Read
    through lorasetup.engine.files: a pipe or device by that name is refused, never read."""
    try:
        return files.read_bytes(path, files.DATA_LIMIT)
    except files.FileProblem as exc:
        if exc.kind == "missing" and not os.path.islink(path):
            return None
        raise FixError(exc.summary) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every platform lets a folder be opened (Windows), which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temporary file in the same folder, fsync it, give it `mode` (default: the file's current
    mode), then rename it over `path`: readers and crashes see the old file or the new one, never a mix."""
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def guarded_write(path: Path, seen: bytes | None, new: bytes) -> Path | None:
    """Replace `path` with `new` if it still holds exactly `seen` (None: it did not exist): back it up first,
    write atomically, keep its mode. Returns the backup's path (None for a new file)."""
    if read_bytes(path) != seen:
        raise FixError(f"{path} changed since the check read it; not touching it. Run lorasetup again.")
    saved = backup(path) if seen is not None else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, new)
    except OSError as exc:
        kept = f" (backup at {saved})" if saved else ""
        raise FixError(f"cannot write {path}: {exc.strerror}{kept}") from None
    if seen is not None:
        _WRITTEN.setdefault(path.resolve(), []).append((_digest(seen), _digest(new)))
    return saved
