"""The end of a long run in words and in JSON: what was reached, the loss curve, the time against the smoke run's
estimate, every checkpoint with its verdict, the one to keep, and, when the run stopped, how to go on."""

from __future__ import annotations

import math
import shlex
from typing import Any

from lorasetup.sd.run.checkpoints import Checkpoint, StateDir
from lorasetup.sd.run.command import strip_options
from lorasetup.sd.run.failures import explain
from lorasetup.sd.run.longrun import LongRun
from lorasetup.sd.run.units import duration, size, sparkline

REPORT_SCHEMA_VERSION = 1
EXIT_SIGNAL = {"interrupted": 130, "terminated": 143}  # 128 + SIGINT / SIGTERM, as a shell reports them


def exit_status(run: LongRun) -> int:
    """0 only when the planned steps were reached and every checkpoint, the final LoRA included, verified."""
    if run.outcome.stopped in EXIT_SIGNAL:
        return EXIT_SIGNAL[run.outcome.stopped]
    return 0 if run.succeeded else 1


def headline(run: LongRun) -> str:
    """One sentence: how the run ended."""
    out, watch = run.outcome, run.watch
    at = f"at step {watch.steps_done} of {run.planned or '?'}"
    if out.stopped == "nonfinite" and watch.nonfinite:
        return f"stopped {at}: avr_loss={watch.nonfinite[1]} at step {watch.nonfinite[0]}, the first non-finite loss"
    if out.stopped == "no-data":
        return "stopped: sd-scripts found no images (\"No data found\") and would exit 0 without training"
    if out.stopped == "traceback":
        return f"stopped {at}: the run crashed: {watch.real_error() or 'a traceback'}"
    if out.stopped:
        return f"stopped {at}: {out.stop_message or out.stopped}"
    if out.returncode != 0:
        how = f"exit status {out.returncode}" if (out.returncode or 0) > 0 else f"signal {-(out.returncode or 0)}"
        return f"the run ended with {how} {at}: {watch.real_error() or 'see its output above'}"
    return _ended_well_or_not(run)


def _ended_well_or_not(run: LongRun) -> str:
    final, reached = run.final, f"{run.watch.steps_done} of {run.planned or '?'} steps"
    if not run.reached:
        return f"sd-scripts exited 0 after {reached}: the run did not finish its plan"
    if final is None:
        return f"{reached} done, but the final LoRA {run.plan.final_file} was not written (or not changed)"
    if final.state != "ok":
        return f"{reached} done, but the final LoRA is {final.verdict}"
    if run.first_nonfinite is not None:
        return f"{reached} done, but the loss turned non-finite at step {run.first_nonfinite} (--on-nan warn)"
    if run.broken:
        return f"{reached} done, final LoRA verified, but {len(run.broken)} checkpoint(s) are broken"
    return f"{reached} done; every checkpoint verified, the final LoRA included"


def loss_lines(run: LongRun) -> list[str]:
    losses = [run.watch.loss[n] for n in sorted(run.watch.loss)]
    finite = {n: v for n, v in run.watch.loss.items() if math.isfinite(v)}
    if not finite:
        return ["loss       no finite loss was reported"]
    low = min(finite, key=finite.__getitem__)
    last = max(finite)
    return [f"loss       first {finite[min(finite)]:.4g}, min {finite[low]:.4g} (step {low}), last finite "
            f"{finite[last]:.4g} (step {last})",
            f"           {sparkline(losses)}"]


def time_line(run: LongRun) -> str:
    timing = run.watch.timing()
    figures = [f"load {timing['load_s']:.0f} s" if timing["load_s"] is not None else "",
               f"{run.watch.median_step_s():.2f} s/step" if run.watch.median_step_s() is not None else ""]
    inner = ", ".join(f for f in figures if f)
    line = f"time       {duration(run.outcome.wall_s)}" + (f" ({inner})" if inner else "")
    eta = run.smoke.get("eta_s") if run.smoke else None
    if eta:
        line += f"; the smoke run estimated {duration(eta)} for {run.smoke.get('total_steps') if run.smoke else '?'}" \
                f" steps ({run.outcome.wall_s / eta:.2f}x)"
    return line


def memory_line(run: LongRun) -> str | None:
    """The run's measured peaks: the trainer's kernel high-water mark, the process tree, GPU memory (CUDA)."""
    trainer, peaks = run.outcome.peak_rss_bytes, run.memory
    figures = [f"trainer {size(trainer)} RAM" if trainer else "",
               f"process tree {size(peaks.host_bytes)} RAM" if peaks.host_bytes else "",
               f"GPU {size(peaks.device_bytes)} ({peaks.device_source})" if peaks.device_bytes else ""]
    shown = [f for f in figures if f]
    return f"memory     peak {', '.join(shown)}" if shown else None


def checkpoint_table(checkpoints: list[Checkpoint], metadata: bool = False) -> list[str]:
    """Step, file, size and verdict of each checkpoint (and its training metadata in one line)."""
    if not checkpoints:
        return ["checkpoints: none written"]
    width = max(len(c.path.name) for c in checkpoints)
    rows = [f"  {'step':>6}  {'file':<{width}}  {'size':>9}  verdict"]
    for c in checkpoints:
        step = str(c.step) if c.step is not None else "?"
        row = f"  {step:>6}  {c.path.name:<{width}}  {size(c.size) if c.size else '-':>9}  {c.verdict}"
        rows.append(row + (f"\n  {'':>6}  {c.report.summary()}" if metadata and c.report else ""))
    return ["checkpoints:", *rows]


def resume_state(run: LongRun) -> StateDir | None:
    """The state folder to continue from: the latest one, and after a NaN the latest one saved before it
    (and no later than the last good checkpoint)."""
    limit = run.first_nonfinite
    good = run.last_good()
    if limit is not None and good is not None and good.step is not None:
        limit = min(limit, good.step + 1)
    states = [s for s in run.states if limit is None or (s.step is not None and s.step < limit)]
    return states[-1] if states else None


def resume_command(run: LongRun) -> list[str] | None:
    """The exact command that continues from the state folder (after a NaN with a tenth of the learning rate)."""
    state = resume_state(run)
    if state is None or run.outcome.stopped is None:
        return None
    argv = strip_options(run.plan.argv, {"resume"}) + ["--resume", str(state.path)]
    lr = _number(run.plan.args.get("learning_rate"))
    if run.first_nonfinite is not None and lr:
        argv.append(f"--learning_rate={lr / 10:g}")
    return argv


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def advice(run: LongRun) -> list[str]:
    """After a NaN: which checkpoint to keep, which ones not to use, and what to change."""
    if run.first_nonfinite is None and not any(c.nonfinite for c in run.checkpoints):
        return []
    good = run.last_good()
    lines = [f"keep: {good.path.name} (step {good.step}), the last checkpoint saved before the loss diverged" if good
             else "keep: no checkpoint was saved before the loss diverged"]
    later = [c.path.name for c in run.checkpoints if c is not good and c.state != "removed"
             and (c.nonfinite or (good is not None and c.step is not None and good.step is not None
                                  and c.step > good.step))]
    if later:
        lines.append("do not use: " + ", ".join(later) + " (saved after the divergence)")
    args = run.plan.args
    lr = args.get("learning_rate")
    where = f"learning_rate = {lr} ({args.place('learning_rate')})" if lr is not None else "the learning rate"
    lines.append(f"change: lower {where}, e.g. to a tenth; check lr_warmup_steps and the scheduler; "
                 f"network_alpha above network_dim also raises the effective rate")
    if str(args.get("mixed_precision") or "no") == "fp16":
        lines.append("change: fp16 overflows easily: try bf16 where the device has it, or --no_half_vae")
    return lines


def failure_hint(run: LongRun) -> str | None:
    """The known failure mode of a crash, an early exit or "No data found" (reference/failure-modes.md)."""
    out = run.outcome
    if out.stopped not in ("traceback", "no-data") and (out.stopped or out.returncode == 0):
        return None
    mode = explain(run.watch.real_error(), list(run.watch.tail)[-12:])
    return f"hint: [{mode.id}] {mode.hint}" if mode else None


def summary_lines(run: LongRun) -> list[str]:
    """The whole summary, one line per entry."""
    lines = [headline(run)]
    hint = failure_hint(run)
    lines += [hint] if hint else []
    lines.append(f"steps      {run.watch.steps_done} of {run.planned or '?'} planned"
                 f"{f' ({run.plan.total_from})' if run.plan.total_steps else ''}")
    memory = memory_line(run)
    lines += loss_lines(run) + [time_line(run)] + ([memory] if memory else []) + checkpoint_table(run.checkpoints)
    if not run.plan.verifiable:
        lines.append(f"not verified: {run.plan.final_file} is a pickle (never opened): --save_model_as=safetensors")
    good = run.last_good()
    lines.append(f"last good checkpoint: {good.path if good else 'none'}"
                 + (f" (step {good.step})" if good and good.step is not None else ""))
    lines += advice(run)
    command = resume_command(run)
    if command:
        lines.append(f"continue from {command[command.index('--resume') + 1]}:")
        lines.append("  $ " + shlex.join(command))
    elif run.outcome.stopped and not run.plan.save_state:
        lines.append("no state was saved to continue from (add --save_state to resume a stopped run)")
    return lines


def report(run: LongRun, target: dict[str, Any]) -> dict[str, Any]:
    """Everything about the run, for `--report run.json` (a versioned schema, like --json)."""
    watch, out = run.watch, run.outcome
    good = run.last_good()
    return {
        "schema_version": REPORT_SCHEMA_VERSION, "kind": "lorasetup-train-run", "target": target,
        "command": run.plan.argv, "started_at": run.started_at, "exit_status": exit_status(run),
        "succeeded": run.succeeded, "headline": headline(run),
        "stop": {"reason": out.stopped, "message": out.stop_message, "error_line": watch.real_error()}
        if out.stopped else None,
        "returncode": out.returncode,
        "steps": {"done": watch.steps_done, "planned": run.planned, "planned_from": run.plan.total_from},
        "loss": {"per_step": {str(n): watch.loss[n] for n in sorted(watch.loss)},
                 "first_nonfinite_step": run.first_nonfinite},
        "timing": {**{k: (round(v, 3) if v is not None else None) for k, v in watch.timing().items()},
                   "median_s_per_step": watch.median_step_s(), "wall_s": round(out.wall_s, 3),
                   "watch_cpu_s": round(run.watch_cpu_s, 3) if run.watch_cpu_s is not None else None,
                   "smoke_eta_s": run.smoke.get("eta_s") if run.smoke else None},
        "peak_rss_bytes": out.peak_rss_bytes,
        "memory": {"trainer_peak_bytes": out.peak_rss_bytes, "tree_peak_bytes": run.memory.host_bytes,
                   "device_peak_bytes": run.memory.device_bytes, "device_source": run.memory.device_source},
        "checkpoints": [c.to_dict() for c in run.checkpoints],
        "last_good_checkpoint": str(good.path) if good else None,
        "states": [{"path": str(s.path), "step": s.step, "size_bytes": s.size} for s in run.states],
        "resume_command": resume_command(run), "advice": advice(run), "failure_hint": failure_hint(run),
        "notes": run.notes,
    }
