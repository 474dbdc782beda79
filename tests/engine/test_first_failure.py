"""Time to verdict: static findings first while the probes work in the background, a live block on a real
terminal (a pty) that settles into gate order, `-x` stopping at the first failure, and the warm doctor end to end.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lorasetup.engine.context import Context
from lorasetup.engine.report import LiveBlock
from lorasetup.engine.result import Check, Result, Status
from lorasetup.engine.runner import Runner
from lorasetup.engine.target import Target

LORASETUP = [sys.executable, "-m", "lorasetup.cli"]


def mk(check_id: str, func, requires=(), tags=("preflight",)) -> Check:
    return Check(check_id, check_id, func, frozenset(tags), tuple(requires))


def slow_probe(ctx: Context) -> Result:
    time.sleep(1.0)  # stands for the training interpreter importing torch
    return Result.ok("torch imports")


CHECKS = [
    mk("deps.interpreter", lambda ctx: Result.ok("python 3.11")),
    mk("deps.deep", slow_probe, requires=("deps.interpreter",), tags=("preflight", "probe")),
    mk("device.accelerate", lambda ctx: Result.ok("cpu"), requires=("deps.deep",)),
    mk("dataset.schema", lambda ctx: Result.fail("unknown key num_repeat")),
    mk("args.known", lambda ctx: Result.ok("every option known")),
]


def test_static_findings_arrive_before_the_probes_and_results_keep_registry_order() -> None:
    arrived: list[tuple[str, float]] = []
    start = time.perf_counter()
    results = Runner(Context(Target()), CHECKS).run(
        CHECKS, fast_first=True, on_result=lambda r: arrived.append((r.check_id, time.perf_counter() - start)))
    assert [a for a, _ in arrived] == ["deps.interpreter", "dataset.schema", "args.known", "deps.deep",
                                       "device.accelerate"]
    assert dict(arrived)["dataset.schema"] < 0.5 <= dict(arrived)["deps.deep"]
    assert [r.check_id for r in results] == [c.id for c in CHECKS]


def test_exitfirst_stops_at_the_first_failure() -> None:
    ran: list[str] = []
    results = Runner(Context(Target()), CHECKS).run(CHECKS, fast_first=True, on_result=lambda r: ran.append(
        r.check_id), stop=lambda r: r.status is Status.FAIL)
    assert ran == ["deps.interpreter", "dataset.schema"]
    assert [r.check_id for r in results] == ["deps.interpreter", "dataset.schema"]


def test_the_live_block_on_a_terminal_settles_into_gate_order() -> None:
    """A real pty: the first drawing shows placeholders, the failure replaces its own line at once, and the last
    drawing lists every check in gate order."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: _drain(master, chunks), daemon=True)
    reader.start()
    with os.fdopen(slave, "w", buffering=1) as stream:
        block = LiveBlock(stream, CHECKS, verbose=False, color=False)
        block.draw()
        Runner(Context(Target()), CHECKS).run(CHECKS, fast_first=True, on_result=block.add)
        block.finish()
    time.sleep(0.2)
    screen = b"".join(chunks).decode()
    drawings = [d for d in re.split(r"\x1b\[\d+F\x1b\[J", screen) if d.strip()]
    assert "… dataset.schema" in drawings[0]
    second = drawings[2]  # after deps.interpreter, then dataset.schema
    assert "✗ dataset.schema" in second and "… deps.deep" in second
    last = [line.split()[1] for line in drawings[-1].splitlines() if line.strip() and line[0] in "✓✗!-E"]
    assert last == [c.id for c in CHECKS]


def _drain(fd: int, chunks: list[bytes]) -> None:
    try:
        while True:
            data = os.read(fd, 4096)
            if not data:
                return
            chunks.append(data)
    except OSError:
        return


def test_doctor_x_names_the_typo_and_stops(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'img'\nnum_repeat = 3\n")
    proc = subprocess.run([*LORASETUP, "doctor", "-x", "--device", "cpu", "--dataset-config",
                           str(tmp_path / "dataset.toml"), "--only", "dataset"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert proc.returncode == 1
    assert "✗ dataset.schema" in proc.stderr and "num_repeat" in proc.stderr
    assert "stopped at the first failure: -x" in proc.stderr and "dataset.steps" not in proc.stderr


def test_the_warm_doctor_reuses_the_probe_until_asked_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real stack probe in this interpreter, twice: the second answer comes from the cache; --fresh asks."""
    monkeypatch.delenv("LORASETUP_FRESH")
    env = {**os.environ, "NO_COLOR": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def doctor(*extra: str) -> str:
        proc = subprocess.run([*LORASETUP, "doctor", "-v", "--device", "cpu", "--python", sys.executable,
                               "--only", "device.torch", *extra], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    assert "stackprobe: fresh probe (no cached answer)" in doctor()
    assert "stackprobe: answer from the cache (unchanged since" in doctor()
    assert "stackprobe: fresh probe (--fresh)" in doctor("--fresh")
