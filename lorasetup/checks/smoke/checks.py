"""The smoke gate: a real short run of the real command, finite loss at every step, a sane LoRA saved.

sd-scripts never checks its loss: a diverging run prints `avr_loss=nan`, exits 0 and saves a LoRA of NaN;
with no images it logs "No data found" and exits 0. So exit code 0 alone is never success here: every step's
loss must be finite and the saved file must hold finite tensors of the rank and alpha asked for.

The one check that writes to stderr: the run's own output is echoed live, since a silent 15-minute check is
worse than a noisy one (under pytest it is captured and shown with a failure).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from lorasetup.checks import check
from lorasetup.checks.smoke import memory
from lorasetup.engine.context import Context
from lorasetup.engine.result import Result
from lorasetup.engine.target import Target
from lorasetup.sd.lora import expect_from_args, verify_lora
from lorasetup.sd.run.command import SmokePlan, run_env, smoke_plan
from lorasetup.sd.run.failures import explain
from lorasetup.sd.run.plan import planned_steps
from lorasetup.sd.run.stream import RunOutcome, run_streaming
from lorasetup.sd.run.units import duration
from lorasetup.sd.trainargs import train_args

PYTEST_MARGIN_S = 120.0  # the pytest timeout of the smoke gate: the run's own timeout plus this


def smoke_pytest_timeout(target: Target) -> float:
    """The pytest timeout of the smoke gate for a Target: its own run timeout plus a margin."""
    return float(target.smoke_timeout) + PYTEST_MARGIN_S


# ---- the check -------------------------------------------------------------------------------------------

def _step_lines(outcome: RunOutcome) -> list[str]:
    watch = outcome.watch
    lines = []
    previous = watch.bar_zero_at
    for n in sorted(watch.step_at):
        took = f"  +{watch.step_at[n] - previous:.1f} s" if previous is not None else ""
        loss = watch.loss.get(n)
        lines.append(f"step {n}/{watch.total}  avr_loss={loss:.4g}{took}" if loss is not None
                     else f"step {n}/{watch.total}{took}")
        previous = watch.step_at[n]
    return lines


def _report(ctx: Context, plan: SmokePlan, outcome: RunOutcome) -> tuple[dict[str, Any], list[str]]:
    """The numbers of a run (Result.data) and their lines for the details."""
    watch = outcome.watch
    timing = watch.timing()
    total, total_from = planned_steps(ctx)
    per_step, load = timing["s_per_step"], timing["load_s"]
    eta = total * per_step + load if total and per_step is not None and load is not None else None
    data: dict[str, Any] = {
        "command": plan.argv, "real_command": plan.real, "dropped": plan.dropped,
        "steps_requested": ctx.target.smoke_steps, "steps_done": watch.steps_done,
        "losses": {n: watch.loss[n] for n in sorted(watch.loss)}, "step_times": _step_lines(outcome),
        **{k: (round(v, 3) if v is not None else None) for k, v in timing.items()},
        "wall_s": round(outcome.wall_s, 3), "peak_rss_mb": round(outcome.peak_rss_bytes / 2**20)
        if outcome.peak_rss_bytes else None,
        "total_steps": total, "total_steps_from": total_from, "eta_s": round(eta, 1) if eta else None,
        "returncode": outcome.returncode, "stopped": outcome.stopped, "error_line": watch.real_error(),
    }
    lines = _step_lines(outcome)
    figures = []
    if load is not None:
        figures.append(f"load {load:.1f} s (start to step 0: model, latents, optimizer)")
    if per_step is not None:
        figures.append(f"{per_step:.2f} s/step")
    if outcome.peak_rss_bytes:
        figures.append(f"peak RAM {outcome.peak_rss_bytes / 2**30:.2f} GiB")
    if figures:
        lines.append(", ".join(figures))
    if eta is not None:
        lines.append(f"full run: {total} steps ({total_from}) x {per_step:.2f} s + load = about {duration(eta)}")
    elif total is None:
        lines.append(f"full run: total steps unknown ({total_from})")
    lines.append("command: " + shlex.join(plan.argv))
    if plan.dropped:
        lines.append("left out for the smoke run: " + ", ".join(plan.dropped))
    return data, lines


def _judge_stop(ctx: Context, outcome: RunOutcome, lines: list[str], data: dict[str, Any]) -> Result | None:
    """The verdict when the run was stopped, crashed or ended early; None when it ran its steps."""
    watch = outcome.watch
    steps = ctx.target.smoke_steps
    elapsed = f"after {outcome.wall_s:.0f} s"
    error = watch.real_error()
    tail = ["last output:"] + [f"  {t}" for t in list(watch.tail)[-12:]]
    if outcome.stopped == "nonfinite" and watch.nonfinite:
        step, value = watch.nonfinite
        lr = train_args(ctx).get("learning_rate")
        where = f" (learning_rate = {lr} at {train_args(ctx).place('learning_rate')})" if lr is not None else ""
        return Result.fail(f"avr_loss={value} at step {step} of {steps}: training diverges; stopped {elapsed}",
                           lines, hint="sd-scripts would carry on and save a LoRA of NaN that renders black. "
                                       f"Lower the learning rate{where}; with fp16 also try --no_half_vae or "
                                       "bf16; then run lorasetup smoke again", data=data)
    if outcome.stopped == "timeout":
        phase = f"at step {watch.steps_done} of {steps}" if watch.steps_done else \
            ("before the first step (still loading?)" if watch.bar_zero_at is None else "in the first step")
        return Result.fail(f"no result within {ctx.target.smoke_timeout:.0f} s, {phase}: killed", lines + tail,
                           hint="if the run is just slow, raise the smoke timeout ([smoke] timeout = 1800 in "
                                "lorasetup.toml); if it hangs, the last output shows where", data=data)
    mode = explain(error, list(watch.tail)[-12:]) if outcome.stopped or outcome.returncode != 0 else None
    if mode:
        data["failure_mode"] = mode.id
    if outcome.stopped == "no-data":
        return Result.fail(f"sd-scripts found no images (\"No data found\") and would exit 0 without training; "
                           f"stopped {elapsed}", lines, hint=mode.hint if mode else None, data=data)
    if outcome.stopped == "traceback" or outcome.returncode != 0:
        at = f"at step {watch.steps_done + 1} of {steps}" if watch.bar_zero_at is not None else "before training"
        how = "crashed" if outcome.stopped == "traceback" or (outcome.returncode or 0) > 0 else \
            f"was killed by signal {-(outcome.returncode or 0)}"
        return Result.fail(f"the run {how} {at}: {error or 'exit status ' + str(outcome.returncode)}", lines + tail,
                           hint=(f"[{mode.id}] {mode.hint}" if mode else
                                 "the line above is sd-scripts' own error; run lorasetup doctor for the static checks"),
                           data=data)
    if watch.steps_done < steps:
        return Result.fail(f"the run exited 0 after {watch.steps_done} of {steps} steps: it did not train",
                           lines + tail,
                           hint=f"{error}" if error else "read the output above for why sd-scripts stopped", data=data)
    return None


def _judge_lora(ctx: Context, plan: SmokePlan, outcome: RunOutcome, lines: list[str], data: dict[str, Any]) -> Result:
    """The verdict on a run that ran its steps: the LoRA it saved."""
    if not plan.output.is_file():
        return Result.fail(f"the run exited 0 but saved no LoRA ({plan.output.name})", lines,
                           hint="read the output above for why sd-scripts did not save", data=data)
    lora = verify_lora(plan.output, expect_from_args(train_args(ctx)))
    data["output"], data["output_bytes"] = str(plan.output), lora.size
    if lora.problems:
        return Result.fail(f"the saved LoRA is broken: {lora.problems[0]}", lora.problems[1:] + lora.facts + lines,
                           hint="the full run would save the same kind of file; fix the cause before the long run",
                           data=data)
    watch = outcome.watch
    losses = [watch.loss[n] for n in sorted(watch.loss)]
    eta = f"; full run ≈ {duration(data['eta_s'])}" if data["eta_s"] else ""
    return Result.ok(f"{watch.steps_done} steps, avr_loss {losses[0]:.4g} → {losses[-1]:.4g} (finite), "
                     f"{data['s_per_step']:.1f} s/step, load {data['load_s']:.0f} s{eta}", lora.facts + lines,
                     data=data)


def judge(ctx: Context, plan: SmokePlan, outcome: RunOutcome) -> Result:
    """The verdict on one smoke run."""
    data, lines = _report(ctx, plan, outcome)
    return _judge_stop(ctx, outcome, lines, data) or _judge_lora(ctx, plan, outcome, lines, data)


def run_smoke(ctx: Context, echo: IO[str] | None, keep: bool = False) -> Result:
    """Run the smoke command in a fresh temp folder, echoing its output to `echo`; judge it; remove the
    folder unless `keep`."""
    temp = Path(tempfile.mkdtemp(prefix="lorasetup-smoke-"))
    try:
        args = train_args(ctx)
        plan = smoke_plan(ctx.target, args.config_file, bool(args.get("logging_dir")), temp, ctx.target.smoke_steps)
        extra, bucket_line, bucket_data = memory.largest_bucket_args(ctx, temp)
        plan.argv += extra
        found, note = memory.estimated(ctx)
        if echo is not None:
            echo.write(f"lorasetup smoke: {shlex.join(plan.argv)}\n")
            echo.flush()
        sampler = memory.sampler(ctx)
        outcome = run_streaming(plan.argv, timeout=ctx.target.smoke_timeout, echo=echo, env=run_env(),
                                sampler=sampler)
        result = judge(ctx, plan, outcome)
        memory.add_memory(result, outcome, sampler.peaks, found, note, bucket_line, bucket_data)
    finally:
        if not keep:
            shutil.rmtree(temp, ignore_errors=True)
    result.data["temp_dir"] = str(temp) if keep else None
    if keep:
        result.details.append(f"kept: {temp}")
    return result


@check("smoke.run", "a real short training run: finite loss at every step, a sane LoRA saved", tags=("smoke",),
       requires=("repo.present",), timeout_s=smoke_pytest_timeout(Target()), timeout_from=smoke_pytest_timeout)
def smoke_run(ctx: Context) -> Result:
    return run_smoke(ctx, echo=sys.stderr)
