"""The CLI's run commands: `lorasetup smoke` and `lorasetup train` (front end: they use the registry,
the runner and the report, and the run machinery of lorasetup.sd.launch)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import replace

from lorasetup.checks import all_checks, by_id
from lorasetup.checks.smoke.checks import run_smoke
from lorasetup.engine.context import Context
from lorasetup.engine.report import err, exit_code, render_result, summary_line, to_json, use_color
from lorasetup.engine.result import CheckFailed, Result, Status
from lorasetup.engine.runner import Runner, run_one, select
from lorasetup.sd.run.command import real_command, run_env


def smoke_command(ctx: Context, keep: bool, as_json: bool) -> int:
    """`lorasetup smoke`: the smoke check (after its requirements), rendered; exit 1 unless it passed."""
    check = by_id()["smoke.run"]
    runner = Runner(ctx, all_checks())
    start = time.perf_counter()
    results = runner.run([c for c in all_checks() if c.id in check.requires])
    blocked = next((r for r in results if r.status.blocking), None)
    if blocked is not None:
        result = Result.skip(f"blocked by {blocked.check_id} ({blocked.status.value})").with_meta(check, 0.0)
    else:
        result = run_one(ctx, replace(check, func=lambda c: run_smoke(c, keep=keep, echo=sys.stderr)))
    results.append(result)
    color = use_color(sys.stderr)
    for r in results:
        err(render_result(r, ctx.verbose, color))
    if as_json:
        print(json.dumps(to_json(ctx.target, results, elapsed_s=round(time.perf_counter() - start, 3)),
                         indent=2, default=str))
    return 1 if result.status is not Status.OK else exit_code(results)


def train_command(ctx: Context, no_smoke: bool, force: bool) -> int:
    """`lorasetup train`: the preflight gates and the smoke run, then the real run with the same command
    minus the smoke overrides. A failing gate refuses the start (exit 1) unless `force`."""
    checks = all_checks()
    color = use_color(sys.stderr)
    start = time.perf_counter()
    runner = Runner(ctx, checks)
    results: dict[str, Result] = {}

    def show(result: Result) -> None:
        if result.check_id not in results:  # a requirement shared by both phases is shown once
            results[result.check_id] = result
            err(render_result(result, ctx.verbose, color))
    failed: list[Result] = []
    for tags in ({"preflight"},) if no_smoke else ({"preflight"}, {"smoke"}):  # no smoke run after a failure
        runner.run(select(checks, tags=tags), on_result=show)
        failed = [r for r in results.values() if r.status in (Status.FAIL, Status.ERROR)]
        if failed and not force:
            err("\n" + summary_line(list(results.values()), time.perf_counter() - start))
            err(f"lorasetup: not starting the run: {len(failed)} check(s) failed "
                f"({', '.join(r.check_id for r in failed)}). Fix them, or pass --force to start anyway.")
            return 1
    err("\n" + summary_line(list(results.values()), time.perf_counter() - start))
    try:
        argv = real_command(ctx.target)
    except CheckFailed as exc:
        err(f"lorasetup: {exc.summary}")
        return 1
    err(("lorasetup: starting despite failed checks (--force)\n" if failed else "") + "$ " + shlex.join(argv))
    try:
        proc = subprocess.run(argv, env=run_env(), stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        err(f"lorasetup: cannot start {argv[0]}: {exc.strerror or exc}")
        return 1
    return proc.returncode
