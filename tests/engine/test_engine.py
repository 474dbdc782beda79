"""The runner and the probe bridge: ordering, blocked dependents, crashes, hangs, garbage."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError, run_program
from lorasetup.engine.result import Check, CheckFailed, Result, Status
from lorasetup.engine.runner import Runner, select
from lorasetup.engine.target import Target

PY = Path(sys.executable)


def mk(check_id, func, requires=(), tags=("preflight",)):
    return Check(check_id, check_id, func, frozenset(tags), tuple(requires))


def boom(ctx):
    raise RuntimeError("kaboom")


def test_order_blocking_crash_and_bad_input():
    checks = [
        mk("repo.c", lambda ctx: Result.ok("c"), requires=("repo.b",)),
        mk("repo.b", lambda ctx: Result.fail("b broke"), requires=("repo.a",)),
        mk("repo.a", lambda ctx: Result.ok("a")),
        mk("deps.x", boom),
        mk("deps.y", lambda ctx: Result.ok("y"), requires=("deps.x",)),
        mk("deps.z", lambda ctx: (_ for _ in ()).throw(CheckFailed("bad file", hint="fix it"))),
    ]
    results = Runner(Context(Target()), checks).run(checks)
    assert [r.check_id for r in results] == ["repo.a", "repo.b", "repo.c", "deps.x", "deps.y", "deps.z"]
    by_id = {r.check_id: r for r in results}
    assert by_id["repo.c"].status is Status.SKIP and by_id["repo.c"].summary == "blocked by repo.b (fail)"
    assert by_id["deps.x"].status is Status.ERROR and "RuntimeError: kaboom" in by_id["deps.x"].summary
    assert "Traceback" in by_id["deps.x"].traceback
    assert by_id["deps.y"].summary == "blocked by deps.x (error)"
    assert (by_id["deps.z"].status, by_id["deps.z"].hint) == (Status.FAIL, "fix it")
    assert all(r.duration_s >= 0 for r in results)


def test_select_by_tags_only_and_skip():
    checks = [mk("repo.a", boom), mk("smoke.run", boom, tags=("smoke",)), mk("deps.deep", boom)]
    assert [c.id for c in select(checks)] == ["repo.a", "deps.deep"]
    assert [c.id for c in select(checks, tags={"preflight", "smoke"}, skip={"deps.deep"})] == ["repo.a", "smoke.run"]
    assert [c.id for c in select(checks, only={"smoke"})] == ["smoke.run"]
    with pytest.raises(ValueError, match="unknown check id"):
        select(checks, only={"smoke.rnu"})


def program(folder: Path, body: str, name: str = "prog") -> Path:
    """A probe program whose main() runs `body` (indented) with `params` and `checkpoint` in scope."""
    path = folder / f"{name}.py"
    path.write_text("def main(params, checkpoint):\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    return path


def test_probe_returns_result_gets_params_and_keeps_noise_out(tmp_path):
    prog = program(tmp_path, "print('noise from an import')\nreturn {'answer': params['x'] * 2}")
    assert run_program(PY, prog, {"x": 21}) == {"answer": 42}


def test_probe_runs_without_its_own_folder_on_sys_path(tmp_path):
    """Neither the entry's folder (lorasetup/engine) nor the working directory shadows the venv's modules."""
    prog = program(tmp_path, "import sys\nreturn {'path': sys.path}")
    path = run_program(PY, prog, cwd=tmp_path)["path"]
    assert str(Path(__file__).parents[2] / "lorasetup" / "engine") not in path
    assert "" not in path and str(tmp_path) not in path


def test_probe_crash_names_interpreter_and_output(tmp_path):
    with pytest.raises(ProbeError) as info:
        run_program(PY, program(tmp_path, "import no_such_module_here"))
    assert str(PY) in str(info.value) and "crashed (exit 1)" in str(info.value)
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in str(info.value)
    assert f"{tmp_path / 'prog.py'}\", line 2, in main" in info.value.output  # a real traceback, file and line


def test_probe_checkpoint_survives_an_abort(tmp_path):
    """What a program checkpointed before compiled code killed the interpreter is its answer."""
    prog = program(tmp_path, "checkpoint({'stage': 'import torch'})\nimport os\nos.abort()")
    assert run_program(PY, prog) == {"stage": "import torch"}


def test_probe_hang_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child.pid"
    body = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)")
    start = time.monotonic()
    with pytest.raises(ProbeError, match="did not answer within 2 s"):
        run_program(PY, program(tmp_path, body), timeout=2)
    assert time.monotonic() - start < 10
    child = int(marker.read_text())
    time.sleep(0.2)
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout.strip()
    assert state in ("", "Z"), f"grandchild {child} survived: {state}"


def test_probe_garbage_and_missing_interpreter(tmp_path):
    with pytest.raises(ProbeError, match="no readable result"):
        run_program(PY, program(tmp_path, "import os, sys\nsys.stderr.write('garbage')\nos._exit(0)"))
    with pytest.raises(ProbeError, match="cannot be started"):
        run_program(tmp_path / "missing" / "python", program(tmp_path, "return {}"))


def test_probe_error_becomes_error_result(tmp_path):
    prog = program(tmp_path, "raise SystemExit(3)")
    check = mk("deps.p", lambda ctx: Result.ok(str(ctx.probe("p", prog))))
    result = Runner(Context(Target(python=PY)), [check]).run([check])[0]
    assert result.status is Status.ERROR and "crashed (exit 3)" in result.summary


def test_memo_runs_once_across_threads():
    ctx = Context(Target())
    calls = []
    ctx.prefetch("k", lambda: calls.append(1) or "v")
    assert ctx.memo("k", lambda: calls.append(2) or "other") == "v"
    assert calls == [1]


def test_bootstrap_runs_a_shared_fix_once_and_rechecks_dependents():
    from lorasetup.engine.fixer import bootstrap
    from lorasetup.engine.result import Fix

    state = {"installed": False, "runs": 0}

    def install():
        state["runs"] += 1
        state["installed"] = True

    def needs_install(ctx):
        if state["installed"]:
            return Result.ok("installed")
        return Result.fail("missing", fix=Fix("pip install x", ["pip install x==1"], install))
    checks = [mk("deps.a", needs_install), mk("deps.b", needs_install),
              mk("deps.c", lambda ctx: Result.ok("c"), requires=("deps.b",))]
    results, outcomes = bootstrap(lambda: Context(Target()), checks, checks, apply=True, yes=False)
    assert state["runs"] == 1
    assert [(o.check_id, o.state) for o in outcomes] == [("deps.a", "fixed"), ("deps.b", "fixed")]
    assert [r.status for r in results] == [Status.OK, Status.OK, Status.OK]


def test_bootstrap_leaves_unsafe_fixes_without_yes():
    from lorasetup.engine.fixer import bootstrap
    from lorasetup.engine.result import Fix

    applied = []
    check = mk("device.x", lambda ctx: Result.fail("x", fix=Fix("rewrite", ["edit"], lambda: applied.append(1),
                                                                  safe=False)))
    _, outcomes = bootstrap(lambda: Context(Target()), [check], [check], apply=True, yes=False)
    assert outcomes[0].state == "needs --yes" and applied == []
    _, outcomes = bootstrap(lambda: Context(Target()), [check], [check], apply=True, yes=True)
    assert applied == [1] and outcomes[0].state == "still failing"


def test_smoke_checks_wait_for_the_preflight_checks_of_the_run():
    trained = []
    smoke = mk("smoke.run", lambda ctx: trained.append(1) or Result.ok("trained"), tags=("smoke",))
    bad = mk("dataset.schema", lambda ctx: Result.fail("typo"))
    results = Runner(Context(Target()), [smoke, bad]).run([smoke, bad])
    by_id = {r.check_id: r for r in results}
    assert by_id["smoke.run"].status is Status.SKIP and trained == []
    assert by_id["smoke.run"].summary == "blocked by failing preflight checks: dataset.schema"
    alone = Runner(Context(Target()), [smoke, bad]).run([smoke])  # `-m smoke` alone: the person chose
    assert alone[0].status is Status.OK and trained == [1]


def test_stack_probe_skips_the_deep_imports_when_deps_deep_is_not_planned(monkeypatch):
    from lorasetup.checks import all_checks
    from lorasetup.engine.runner import select as pick
    from lorasetup.sd import stackprobe

    def deep_targets(ctx):
        return ["imagesize"], [("imagesize", "get")]
    monkeypatch.setattr(stackprobe, "deep_targets", deep_targets)
    ctx = Context(Target(python=PY))
    assert stackprobe._deep_targets(ctx)[:2] == (["imagesize"], [("imagesize", "get")])  # run not known: all
    checks = all_checks()
    runner = Runner(ctx, checks)
    runner.plan(runner.order(pick(checks, only={"device"})))
    assert "device.torch" in ctx.planned and "deps.deep" not in ctx.planned
    assert stackprobe._deep_targets(ctx) == ([], [], None)
    ctx.close()
