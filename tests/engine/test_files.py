"""The guarded reader (lorasetup.engine.files) on real odd files: pipes, sockets, devices, folders, symlink loops,
sparse giants, foreign encodings, deep nesting, and a pipe swapped in between the stat and the open. Every call
runs under a 5 s watchdog: a reader that blocks fails the test instead of hanging it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorasetup.engine import files
from lorasetup.engine.files import FileProblem
from tests.support.privileges import without_root_powers


def answers(call: Callable[[], Any], within: float = 5.0) -> Any:
    """`call()`'s value, or the exception it raised; fails when it has not answered `within` seconds."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("value", call()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test to inspect
            box.append(("raised", exc))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert box, f"no answer within {within} s: the reader blocked"
    return box[0][1]


def problem(call: Callable[[], Any]) -> FileProblem:
    got = answers(call)
    assert isinstance(got, FileProblem), f"expected a FileProblem, got {got!r}"
    return got


def test_a_named_pipe_is_named_and_never_opened(tmp_path: Path) -> None:
    pipe = tmp_path / "dataset.toml"
    os.mkfifo(pipe)
    for read in (files.read_bytes, files.read_text, files.read_toml, files.read_json, files.read_source):
        found = problem(lambda read=read: read(pipe))
        assert found.kind == "not-regular" and found.file_kind == "a named pipe (FIFO)"
        assert str(pipe) in found.summary and "waits for a program to write" in found.summary
        assert found.hint and "ls -l" in found.hint


def test_sockets_devices_and_folders_are_named_by_kind(tmp_path: Path) -> None:
    sock_path = tmp_path / "a.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    (tmp_path / "folder.toml").mkdir()
    try:
        assert problem(lambda: files.read_bytes(sock_path)).file_kind == "a socket"
        assert problem(lambda: files.read_bytes(tmp_path / "zero.txt")).file_kind == "a character device"
        assert problem(lambda: files.read_bytes(tmp_path / "folder.toml")).file_kind == "a folder"
    finally:
        server.close()


def test_symlink_loops_broken_links_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    (tmp_path / "dead.txt").symlink_to("nowhere.txt")
    assert problem(lambda: files.read_bytes(tmp_path / "loop.txt")).kind == "loop"
    dead = problem(lambda: files.read_bytes(tmp_path / "dead.txt"))
    assert dead.kind == "missing" and "broken symlink (to nowhere.txt" in dead.summary
    assert problem(lambda: files.read_bytes(tmp_path / "absent.txt")).problem == "does not exist"
    assert files.describe(tmp_path / "loop.txt").startswith("is a symlink loop")
    assert files.resolved(tmp_path / "loop.txt") == tmp_path / "loop.txt"  # Path.resolve raises RuntimeError here


def test_a_pipe_swapped_in_after_the_stat_does_not_block_the_open(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: os.stat saw a regular file, then a pipe took its place. O_NONBLOCK makes the open return at
    once and the fstat of the open file names the pipe."""
    regular, pipe = tmp_path / "regular.txt", tmp_path / "caption.txt"
    regular.write_text("a caption\n")
    os.mkfifo(pipe)
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: real_stat(regular if Path(p) == pipe else p, *a, **k))
    found = problem(lambda: files.read_text(pipe))
    assert found.file_kind == "a named pipe (FIFO)" and "swapped in while lorasetup opened it" in found.summary


def test_a_file_that_vanishes_between_the_stat_and_the_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "a.png"
    gone.write_bytes(b"x")
    real_open = os.open

    def open_after_delete(path: Any, *args: Any, **kw: Any) -> int:
        if Path(path) == gone:
            gone.unlink()
        return real_open(path, *args, **kw)
    monkeypatch.setattr(files.os, "open", open_after_delete)
    assert problem(lambda: files.read_bytes(gone)).kind == "vanished"


def test_size_limits_are_checked_before_reading(tmp_path: Path) -> None:
    giant = tmp_path / "caption.txt"
    with giant.open("wb") as fh:
        fh.truncate(4 << 30)  # 4 GiB, sparse: costs no disk and must cost no time
    found = problem(lambda: files.read_text(giant))
    assert found.kind == "too-large" and "4,096.0 MiB, over the 16 MiB" in found.summary


@pytest.mark.parametrize("raw, words", [
    ("a = 'caf\xe9'\n".encode("utf-16"), "is UTF-16 text (it starts with the byte-order mark FF FE)"),
    ("a = 1\n".encode("utf-16-be"), "holds a NUL character at offset 0 (UTF-16 text without a byte-order mark?)"),
    ("a = 'caf\xe9'\n".encode("utf-16-le"), "looks like UTF-16 text (every other byte is 0)"),
    ("a = 1\n".encode("utf-32"), "is UTF-32 text"),
    (b"a = 1\nb = 'caf\xe9'\n", "line 2, column 9: is not UTF-8 (byte 0xe9 at offset 14; latin-1"),
])
def test_decode_errors_name_the_encoding_or_the_byte(tmp_path: Path, raw: bytes, words: str) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(raw)
    found = problem(lambda: files.read_toml(path))
    assert found.kind == "encoding" and words in found.summary, found.summary


def test_pip_style_decoding_reads_byte_order_marks(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    for encoding in ("utf-8-sig", "utf-16", "utf-32"):
        path.write_bytes("torch==2.1.0\n".encode(encoding))
        assert files.read_text(path, boms=True) == "torch==2.1.0\n"
    with pytest.raises(FileProblem, match="is UTF-32 text"):
        files.read_text(path)  # without `boms`: strict UTF-8, as sd-scripts opens its files


@pytest.mark.parametrize("name, text, words", [
    ("bom.toml", "\ufeff[general]\nx = 1\n", "starts with a UTF-8 byte-order mark"),
    ("bad.toml", "[general\nx = 1\n", "line 1, column 9: is not valid TOML"),
    ("arrays.toml", "x = " + "[" * 2000 + "]" * 2000 + "\n", "nests values hundreds of levels deep"),
    ("tables.toml", "x = " + "{a=" * 1000 + "1" + "}" * 1000 + "\n", "nests values hundreds of levels deep"),
    ("dotted.toml", "[x]\n" + ".".join(["a"] * 3000) + " = 1\n", "nests values more than 100 levels deep"),
    ("nested.toml", "x = " + "[" * 150 + "]" * 150 + "\n", "nests values more than 100 levels deep (at x[0]"),
    ("bom.json", "\ufeff{}", "starts with a UTF-8 byte-order mark"),
    ("deep.json", "[" * 100000 + "]" * 100000, "nests values hundreds of levels deep"),
    ("bad.json", '{"a": 1,,}', "line 1, column 9: is not valid JSON"),
])
def test_parsers_never_crash(tmp_path: Path, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    read = files.read_json if name.endswith(".json") else files.read_toml
    found = problem(lambda: read(path))
    assert words in found.summary and str(path) in found.summary, found.summary


def test_what_is_fine_reads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("[general]\r\nx = [[1, 2], [3]]\r\n")
    assert files.read_toml(path) == {"general": {"x": [[1, 2], [3]]}}
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    assert files.read_toml(link) == files.read_toml(path)
    path.write_bytes("\ufeffcaption".encode())
    assert files.read_text(path) == "\ufeffcaption"  # captions keep their BOM, as sd-scripts reads them


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permission_denied_as_a_user_without_root_powers(tmp_path: Path) -> None:
    """Root reads anything, so the read runs in a child without CAP_DAC_OVERRIDE (setpriv) when we are root."""
    secret = tmp_path / "dataset.toml"
    secret.write_text("a = 1\n")
    secret.chmod(0)
    code = (f"from lorasetup.engine import files\ntry:\n    files.read_toml({str(secret)!r})\n"
            "except files.FileProblem as exc:\n    print(exc.kind, exc.summary)")
    prefix = without_root_powers()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested (root reads anything)")
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("permission ") and "permission denied" in out.stdout, out.stdout + out.stderr

