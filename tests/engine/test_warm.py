"""The warm doctor's cache (lorasetup.sd.warm): reused while nothing it depends on changed; each input of the
fingerprint invalidates it (a real pip install into a real venv, the accelerate config, CUDA_VISIBLE_DEVICES,
an sd-scripts file); failing answers are never kept; entries expire; --fresh asks anew."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lorasetup.engine.target import Target
from lorasetup.sd import warm
from tests.support.deps_fixtures import make_venv, package_source, run

PROGRAM = Path(warm.__file__)  # any file stands for the probe program here


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real wheel, built offline with the dev venv's setuptools."""
    root = tmp_path_factory.mktemp("src")
    src = package_source(root / "warmprobe_extra", "warmprobe-extra", "warmprobe_extra", "1.0")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", root / "wheels", src])
    return root / "wheels"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Target:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    python = make_venv(tmp_path / "venv", with_pip=False)
    sd = tmp_path / "sd-scripts"
    (sd / "library").mkdir(parents=True)
    (sd / "train_network.py").write_text("import library.train_util\n")
    (sd / "library" / "train_util.py").write_text("X = 1\n")
    config = tmp_path / "accelerate.yaml"
    config.write_text('{"distributed_type": "NO", "use_cpu": true}\n')
    return Target(kohya_root=sd, python=python, accelerate_config=config)


def ask(target: Target, answer: dict | None = None, fresh: bool = False) -> tuple[dict, list[str]]:
    notes: list[str] = []
    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return answer or {"ok": True, "n": time.monotonic_ns()}
    got = warm.cached("stack", target, PROGRAM, {"deep": True}, compute, keep=lambda a: bool(a.get("ok")),
                      fresh=fresh, note=notes.append)
    return got, notes + (["computed"] if calls else [])


def test_a_second_ask_reuses_the_answer(setup: Target) -> None:
    first, notes = ask(setup)
    assert "computed" in notes and "no cached answer" in notes[0]
    again, notes = ask(setup)
    assert again == first and "computed" not in notes and "from the cache" in notes[0]


def _install(target: Target, wheel: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target.python_exe), "install", "-q", "--no-index",
                    "--find-links", str(wheel), "warmprobe-extra"], check=True, capture_output=True)


CHANGES: dict[str, Callable[..., None]] = {
    "installed packages": lambda t, w, mp: _install(t, w),
    "accelerate config": lambda t, w, mp: t.accelerate_config.write_text('{"distributed_type": "NO"}\n'),
    "environment": lambda t, w, mp: mp.setenv("CUDA_VISIBLE_DEVICES", "1"),
    "sd-scripts files": lambda t, w, mp: os.utime(t.sd_scripts / "library" / "train_util.py",
                                                  ns=(time.time_ns(), time.time_ns() + 10**9)),
}


@pytest.mark.parametrize("part", sorted(CHANGES))
def test_each_input_invalidates(setup: Target, wheel: Path, monkeypatch: pytest.MonkeyPatch, part: str) -> None:
    first, _ = ask(setup)
    CHANGES[part](setup, wheel, monkeypatch)
    again, notes = ask(setup)
    assert "computed" in notes and again != first
    assert notes[0].endswith(f"changed since the cached answer: {part})"), notes


def test_a_failing_answer_is_never_kept(setup: Target) -> None:
    _, notes = ask(setup, {"ok": False, "error": "torch cannot be imported"})
    assert "not cached" in notes[-2]
    _, notes = ask(setup)
    assert "computed" in notes and "no cached answer" in notes[0]


def test_entries_expire_after_a_day(setup: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    ask(setup)
    later = time.time() + warm.TTL_S + 60
    monkeypatch.setattr(warm.time, "time", lambda: later)
    _, notes = ask(setup)
    assert "computed" in notes and "h old" in notes[0]


def test_fresh_asks_anew(setup: Target) -> None:
    ask(setup)
    _, notes = ask(setup, fresh=True)
    assert "computed" in notes and "--fresh" in notes[0]
