"""Deadlines: a check that never answers becomes an `error` "did not answer in N s" with its id, the processes
its work started are killed, and the rest of the run goes on; `--timeout` bounds the whole run. The blocking
checks here really block (an Event nobody sets, a real interpreter process that sleeps)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lorasetup import cli
from lorasetup.engine.context import Context
from lorasetup.engine.result import Check, Result, Status
from lorasetup.engine.runner import Deadline, Runner
from lorasetup.engine.target import Target

NEVER = threading.Event()  # nobody sets it: a wait on it blocks forever


def blocks_forever(ctx: Context) -> Result:
    NEVER.wait()
    return Result.ok("unreachable")


def sleeping_probe(pid_file: Path):
    """A check whose probe program (a real training-interpreter process) writes its pid, then sleeps for ten
    minutes."""
    program = pid_file.with_name("sleeper.py")
    program.write_text("import os, time\n\n\ndef main(params, checkpoint):\n"
                       f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n    time.sleep(600)\n"
                       "    return {}\n")

    def func(ctx: Context) -> Result:
        ctx.probe("sleeper", program, timeout=900)
        return Result.ok("the sleeper answered")
    return func


def gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def wait_for(path: Path, within: float = 20.0) -> str:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_a_check_that_blocks_forever_is_cut_and_the_run_goes_on(tmp_path: Path) -> None:
    pid_file = tmp_path / "probe.pid"
    checks = [
        Check("repo.block", "blocks forever", blocks_forever, timeout_s=0.5),
        Check("repo.sleeper", "its probe sleeps", sleeping_probe(pid_file), timeout_s=3.0),
        Check("repo.same", "waits on the same probe", sleeping_probe(pid_file), timeout_s=30.0),
        Check("repo.after", "answers", lambda ctx: Result.ok("fine")),
    ]
    start = time.monotonic()
    with Context(Target(python=Path(sys.executable))) as ctx:
        waiter = threading.Thread(target=lambda: wait_for(pid_file), daemon=True)
        waiter.start()
        results = {r.check_id: r for r in Runner(ctx, checks).run(checks)}
    took = time.monotonic() - start
    assert results["repo.block"].status is Status.ERROR
    assert results["repo.block"].summary.startswith("repo.block did not answer in 0.5 s")
    assert results["repo.sleeper"].status is Status.ERROR and "did not answer in 3 s" in results["repo.sleeper"].summary
    assert gone(int(wait_for(pid_file))), "the probe process of the abandoned check is still running"
    # the same shared probe: given up at once, not another ten seconds and not a second sleeper
    assert results["repo.same"].status is Status.ERROR and "given up" in results["repo.same"].summary
    assert results["repo.after"].status is Status.OK
    assert took < 3 + 0.5 + 5, took


def test_the_whole_run_deadline_cuts_the_running_check_and_skips_nothing_silently() -> None:
    checks = [Check("repo.first", "answers", lambda ctx: Result.ok("fine")),
              Check("repo.block", "blocks forever", blocks_forever, timeout_s=120.0),
              Check("repo.later", "never gets its turn", lambda ctx: Result.ok("fine"))]
    start = time.monotonic()
    with Context(Target()) as ctx:
        results = {r.check_id: r for r in Runner(ctx, checks, Deadline.start(1.0)).run(checks)}
    assert time.monotonic() - start < 3
    assert results["repo.first"].status is Status.OK
    assert results["repo.block"].status is Status.ERROR
    assert "before the run's --timeout of 1 s ran out" in results["repo.block"].summary
    assert results["repo.later"].status is Status.ERROR and "used up" in results["repo.later"].summary


def test_doctor_timeout_flag_bounds_the_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    checks = [Check("repo.block", "blocks forever", blocks_forever, timeout_s=120.0),
              Check("repo.later", "answers", lambda ctx: Result.ok("fine"))]
    monkeypatch.setattr(cli, "all_checks", lambda: checks)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    code = cli.main(["doctor", "--timeout", "1.5", "--kohya-root", str(tmp_path)])
    assert time.monotonic() - start < 4
    err = capsys.readouterr().err
    assert code == 1
    assert "repo.block did not answer before the run's --timeout of 1.5 s ran out" in err
    assert "repo.later" in err and "used up" in err


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_doctor_timeout_must_be_a_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--timeout", value]) == 2
    assert "--timeout" in capsys.readouterr().err


def test_a_hung_training_interpreter_through_the_cli(tmp_path: Path) -> None:
    """A real `lorasetup doctor` process against an interpreter that hangs at start: it answers within the
    --timeout, exit 1, and the hung process is gone afterwards."""
    pid_file = tmp_path / "python.pid"
    fake = tmp_path / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    fake.chmod(0o755)
    root = tmp_path / "sd-scripts"
    for rel in ("train_network.py", "library/train_util.py", "networks/lora.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lorasetup.cli", "doctor", "--kohya-root", str(root), "--python",
                           str(fake), "--only", "deps.interpreter", "--timeout", "3"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert time.monotonic() - start < 15
    assert proc.returncode == 1, proc.stderr
    assert "deps.interpreter did not answer before the run's --timeout of 3 s ran out" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert gone(int(wait_for(pid_file))), "the hung interpreter is still running"
