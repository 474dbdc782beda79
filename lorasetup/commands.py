"""The CLI's run commands: `lorasetup smoke`, `lorasetup train` and `lorasetup checkpoints` (front end: they use
the registry, the runner and the report, and the run machinery of lorasetup.sd.run)."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from lorasetup.checks import all_checks, by_id
from lorasetup.checks.smoke.checks import run_smoke
from lorasetup.engine.context import Context
from lorasetup.engine.report import err, exit_code, render_result, summary_line, to_json, use_color
from lorasetup.engine.result import CheckFailed, Result, Status
from lorasetup.engine.runner import Runner, run_one, select
from lorasetup.sd.lora import expect_from_args
from lorasetup.sd.run.checkpoints import last_good, verify_folder
from lorasetup.sd.run.command import run_env
from lorasetup.sd.run.console import Console
from lorasetup.sd.run.longrun import TrainOptions, run_long
from lorasetup.sd.run.plan import RunPlan, run_plan
from lorasetup.sd.run.summary import REPORT_SCHEMA_VERSION, checkpoint_table, exit_status, report, summary_lines
from lorasetup.sd.trainargs import TrainArgsError, path_setting, train_args


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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM during the gates and the smoke run unwinds like Ctrl-C, so the smoke run's process group is
    stopped on the way out instead of being left training."""
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _gates(ctx: Context, no_smoke: bool, force: bool) -> tuple[int | None, dict[str, Any] | None]:
    """The preflight gates, then the smoke run: (an exit status when the run must not start, the smoke run's
    figures when it passed)."""
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
            return 1, None
    err("\n" + summary_line(list(results.values()), time.perf_counter() - start))
    if failed:
        err("lorasetup: starting despite failed checks (--force)")
    smoke = results.get("smoke.run")
    return None, smoke.data if smoke is not None and smoke.status is Status.OK else None


def _write_report(path: Path, data: dict[str, Any]) -> bool:
    try:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        err(f"lorasetup: cannot write the report {path}: {exc.strerror or exc}")
        return False
    err(f"report: {path}")
    return True


def _start_notes(plan: RunPlan) -> list[str]:
    notes = []
    if not plan.verifiable:
        notes.append(f"the LoRA is saved as {plan.final_file}, a pickle lorasetup never opens: the run cannot be "
                     "verified and ends with exit 1 (use --save_model_as=safetensors)")
    if plan.output_dir is None:
        notes.append("no output_dir: sd-scripts fails at the first save and no checkpoint can be watched")
    return notes


def train_command(ctx: Context, no_smoke: bool, force: bool, options: TrainOptions | None = None,
                  report_path: Path | None = None) -> int:
    """`lorasetup train`: the preflight gates and the smoke run, then the real run with the same command
    minus the smoke overrides, watched to its end. A failing gate refuses the start (exit 1) unless `force`."""
    options = options or TrainOptions()
    with _sigterm_interrupts():
        refused, smoke = _gates(ctx, no_smoke, force)
    if refused is not None:
        return refused
    try:
        plan = run_plan(ctx)
    except CheckFailed as exc:
        err(f"lorasetup: {exc.summary}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
        return 1
    err("$ " + shlex.join(plan.argv))
    for note in _start_notes(plan):
        err(f"lorasetup: {note}")
    console = Console(sys.stderr, live=sys.stderr.isatty(), quiet=options.quiet, interval_s=options.status_interval_s,
                      total=plan.total_steps, on_nan=options.on_nan)
    try:
        run = run_long(plan, options, console, run_env(), smoke)
    except CheckFailed as exc:
        err(f"lorasetup: {exc.summary}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
        return 1
    err("\nlorasetup train: " + "\n  ".join(summary_lines(run)))
    status = exit_status(run)
    if report_path is not None and not _write_report(report_path, report(run, ctx.target.to_dict())):
        return status or 1
    return status


def checkpoints_command(ctx: Context, directory: Path | None, as_json: bool) -> int:
    """`lorasetup checkpoints [DIR]`: every LoRA in the run's output_dir (or DIR) in step order, each verified;
    the last good one named; exit 1 when any is broken (or there is none)."""
    try:
        output_dir = path_setting(ctx, "output_dir", "output_dir")
        args = train_args(ctx)
    except TrainArgsError:
        output_dir, args = ctx.target.output_dir, None
    folder = directory or output_dir
    if folder is None:
        err("lorasetup checkpoints: no folder: pass one (lorasetup checkpoints DIR) or set output_dir")
        return 2
    if not folder.is_dir():
        err(f"lorasetup checkpoints: {folder} is not a folder")
        return 2
    own_run = args is not None and output_dir is not None and folder.resolve() == output_dir.resolve()
    checkpoints = verify_folder(folder, expect_from_args(args) if own_run and args is not None else None)
    good = last_good(checkpoints)
    broken = [c for c in checkpoints if c.state == "broken"]
    basis = "this run's training arguments" if own_run else "each file's own metadata"
    err(f"{len(checkpoints)} LoRA file(s) in {folder}, by step, checked against {basis}")
    err("\n".join(checkpoint_table(checkpoints, metadata=True)))
    err(f"last good checkpoint: {good.path if good else 'none'}" + (f" (step {good.step})" if good and good.step
                                                                      is not None else ""))
    if broken:
        err(f"{len(broken)} broken: " + ", ".join(c.path.name for c in broken))
    if as_json:
        print(json.dumps({"schema_version": REPORT_SCHEMA_VERSION, "kind": "lorasetup-checkpoints",
                          "folder": str(folder), "checked_against": basis,
                          "checkpoints": [c.to_dict() for c in checkpoints],
                          "last_good_checkpoint": str(good.path) if good else None, "broken": len(broken)},
                         indent=2, default=str))
    return 1 if broken or not checkpoints else 0
