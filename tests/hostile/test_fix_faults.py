"""Fixes under faults, with real processes: a `lorasetup bootstrap --fix` killed in the middle of rewriting a
config leaves the old file or the new one (never half of one) and a backup; a pip fix that fails midway (one
package installed, the next refused by the file system) reports pip's own error line and what is installed now."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import bootstrap
from lorasetup.engine.runner import select
from tests.hostile.baseline import Setup, build
from tests.support.deps_fixtures import copy_venv, make_tree, make_venv, package_source, run, site_packages, target

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and resource limits")


def caption_mismatch(root: Path, padding: int) -> tuple[Setup, bytes, list[str]]:
    """The good setup with captions the dataset TOML does not name (it keeps sd-scripts' default .caption), so
    `bootstrap --fix` rewrites the TOML adding caption_extension; `padding` bytes of comment make it large."""
    setup = build(root)
    text = setup.dataset.read_text().replace("caption_extension = '.txt'\n", "")
    setup.dataset.write_text("# " + "x" * padding + "\n" + text)
    argv = [sys.executable, "-m", "lorasetup.cli", "bootstrap", "--fix", *setup.flags(), "--only", "dataset.captions"]
    return setup, setup.dataset.read_bytes(), argv


def backups(setup: Setup) -> list[Path]:
    return sorted(setup.dataset.parent.glob("dataset.toml.bak-*"))


def old_or_new(setup: Setup, old: bytes) -> str:
    """'old' or 'new' (the old file with the one line the fix adds), never anything else."""
    now = setup.dataset.read_bytes()
    if now == old:
        return "old"
    added = re.compile(rb'^[ \t]*caption_extension = "\.txt"\n', re.MULTILINE)
    assert len(added.findall(now)) == 1 and added.sub(b"", now, count=1) == old, \
        f"half-written: {len(now)} bytes, neither the old {len(old)} nor the new file"
    return "new"


def test_the_fix_itself_rewrites_the_file(tmp_path: Path) -> None:
    setup, old, argv = caption_mismatch(tmp_path, 10)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "[fixed] dataset.captions" in proc.stderr, proc.stderr
    assert old_or_new(setup, old) == "new"
    assert [b.read_bytes() for b in backups(setup)] == [old]


def test_a_write_cut_off_midway_leaves_the_old_file_and_a_backup(tmp_path: Path) -> None:
    """The file-size limit lets the fix write all of the backup but only part of the new file: the write fails
    there (EFBIG, as on a full disk; Python ignores the SIGXFSZ that would kill other programs). Deterministic,
    whatever the writer's code looks like: an in-place rewrite would leave a cut-off file."""
    setup, old, argv = caption_mismatch(tmp_path, 300_000)  # larger than any cache or .pyc file written on the way
    limit = len(old) + 10  # the new file is ~30 bytes longer

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path, preexec_fn=cap)
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert "[fix failed] dataset.captions" in proc.stderr
    assert old_or_new(setup, old) == "old"
    assert [b.read_bytes() for b in backups(setup)] == [old]


@pytest.mark.parametrize("extra_delay_s", [0.0, 0.002, 0.01])
def test_kill_9_once_the_backup_exists(tmp_path: Path, extra_delay_s: float) -> None:
    """SIGKILL as soon as the backup appears (plus a little): the rewrite of an 8 MB TOML is then under way."""
    setup, old, argv = caption_mismatch(tmp_path, 8_000_000)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not backups(setup) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(extra_delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = old_or_new(setup, old)
    saved = backups(setup)
    assert saved, "killed before the backup was made, so before the rewrite"
    if state == "new":  # the rewrite finished before the kill: its backup is whole
        assert saved[0].read_bytes() == old


# ----------------------------------------------------------------------------- pip, failing midway

PACKAGES = {"alpha-dep": ("alpha_dep", ()), "beta-pkg": ("beta_pkg", ("alpha-dep==1.0",))}


@pytest.fixture(scope="module")
def midway(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A wheelhouse with beta-pkg, which needs alpha-dep (so pip installs alpha-dep first), and a venv with pip."""
    work = tmp_path_factory.mktemp("midway")
    for dist, (module, deps) in PACKAGES.items():
        package_source(work / "src" / dist, dist, module, "1.0", dependencies=deps)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", work / "wheels", *(work / "src").iterdir()])
    return work / "wheels", make_venv(work / "venv", with_pip=True)


def test_a_pip_fix_failing_midway_says_what_is_installed_now(tmp_path: Path, midway: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheels, template = midway
    python = copy_venv(template.parent.parent, tmp_path / "venv")
    (site_packages(python) / "beta_pkg").write_text("a file where beta-pkg's package folder must go\n")
    tree = make_tree(tmp_path / "sd-scripts", ["import alpha_dep", "import beta_pkg"],
                     ["alpha-dep==1.0", "beta-pkg==1.0"])
    checks = all_checks()
    _, outcomes = bootstrap(lambda: Context(target(tree, python), pip_args=["--no-index", "--find-links",
                                                                            str(wheels)]),
                            checks, select(checks, only=("deps.versions",)), apply=True, yes=False)
    failed = {o.check_id: o for o in outcomes}
    assert failed["deps.versions"].state == "fix failed"
    message = failed["deps.versions"].message
    assert "ERROR: Could not install packages due to an OSError" in message and "beta_pkg" in message
    assert f"installed now in {python}:" in message
    assert "alpha-dep==1.0: 1.0 installed" in message
    assert "beta-pkg==1.0: missing" in message
