"""Fixtures shared by lorasetup's own tests: real git repositories with real submodules on file:// URLs.

The file protocol for submodules is allowed only inside these tests (through GIT_CONFIG_* variables).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.git import GIT_ENV, SD_SCRIPTS_FILES, git, write_tree


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every lorasetup subprocess it starts) sees the test git settings."""
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def sd_scripts_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sd-scripts-like repository with two commits (the second is the one kohya_ss pins)."""
    origin = tmp_path_factory.mktemp("origin") / "sd-scripts"
    origin.mkdir()
    git(origin, "init", "-q")
    write_tree(origin, SD_SCRIPTS_FILES)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "first")
    (origin / "networks" / "lora.py").write_text("import math\nRANK = 4\n")
    git(origin, "commit", "-qam", "second")
    return origin


@pytest.fixture(scope="session")
def kohya_origin(sd_scripts_origin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kohya_ss-like repository with sd-scripts as a submodule over a file:// URL."""
    origin = tmp_path_factory.mktemp("origin") / "kohya_ss"
    origin.mkdir()
    git(origin, "init", "-q")
    write_tree(origin, {"kohya_gui.py": "print('gui')\n", "requirements.txt": "packaging\n"})
    subprocess.run(["git", "-C", str(origin), "submodule", "add", "-q", sd_scripts_origin.as_uri(), "sd-scripts"],
                   check=True, env={**os.environ, **GIT_ENV}, capture_output=True)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "kohya_ss with sd-scripts")
    return origin


@pytest.fixture
def make_kohya(kohya_origin: Path, sd_scripts_origin: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Build a fresh checkout in one of the states people end up in; returns its root."""
    def make(state: str) -> Path:
        if state == "bare":
            root = tmp_path / "sd-scripts"
            git(tmp_path, "clone", "-q", sd_scripts_origin.as_uri(), str(root))
            return root
        root = tmp_path / "kohya_ss"
        git(tmp_path, "clone", "-q", kohya_origin.as_uri(), str(root))
        sub = root / "sd-scripts"
        if state == "never-initialised":
            return root
        if state == "zip":
            zipped = tmp_path / "kohya_ss-main"
            shutil.copytree(root, zipped, ignore=shutil.ignore_patterns(".git"))
            return zipped
        git(root, "submodule", "update", "--init", "--recursive")
        if state == "deinitialised":
            git(root, "submodule", "deinit", "-f", "sd-scripts")
        elif state == "other-commit":
            git(sub, "checkout", "-q", "HEAD~1")
        elif state == "dirty":
            (sub / "networks" / "lora.py").write_text("import math\nRANK = 8  # my local edit\n")
            (sub / "my_notes.txt").write_text("do not lose me\n")
        elif state != "populated":
            raise ValueError(state)
        return root
    return make


# --- no dead ends: every failing result any test produces carries a fix or a hint -----------------------

_DEAD_ENDS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _no_dead_ends(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record each registered check's failing result that offers neither a fix nor a hint (the person would be
    left with nothing to do); the session fails at the end if any test walked into one."""
    from lorasetup.checks import by_id
    from lorasetup.engine.result import Result, Status

    real = {c.id: c.func for c in by_id().values()}  # the registry's own checks, not a test's fakes
    original = Result.with_meta

    def with_meta(self: Result, check, duration_s: float) -> Result:  # type: ignore[no-untyped-def]
        result = original(self, check, duration_s)
        is_real = real.get(check.id) is check.func
        if result.status is Status.FAIL and is_real and not result.fix and not (result.hint or "").strip():
            _DEAD_ENDS.setdefault(f"{check.id}: {result.summary}", request.node.nodeid)
        return result
    monkeypatch.setattr(Result, "with_meta", with_meta)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _DEAD_ENDS:
        lines = "\n".join(f"  {what}  (in {where})" for what, where in sorted(_DEAD_ENDS.items()))
        session.config.get_terminal_writer().line(
            f"\nfailing results with neither a fix nor a hint (a dead end for the person):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
