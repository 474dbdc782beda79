"""device.distributed: a launch of more than one process or machine meets through accelerate itself.

The run's own `accelerate launch` (same config, flags and training interpreter) starts a small program on every
rank; it builds Accelerator() as sd-scripts does, and the ranks exchange host, device, versions, the sd-scripts
commit, the installed packages and the dataset file list with one all_gather. On several machines, each runs
`lorasetup doctor` with its own `--machine_rank`, exactly as the real run will start.
"""

from __future__ import annotations

import shlex
from typing import Any

from lorasetup.checks import check
from lorasetup.engine.context import Context
from lorasetup.engine.result import Result
from lorasetup.sd import accelconfig
from lorasetup.sd.dataset.plan import dataset_plan
from lorasetup.sd.distributed import (
    LaunchPlan,
    Outcome,
    known_error,
    last_error_line,
    launch_plan,
    mismatches,
    port_in_use,
    run_rendezvous,
    where,
)
from lorasetup.sd.trainargs import train_args

ALONE_HINT = ("on a machine without CUDA, accelerate runs every launched process as its own single-process run: "
              "set ACCELERATE_USE_CPU=1 for CPU training with gloo, or launch one process (`--num_processes 1`)")


def _dataset_dirs(ctx: Context) -> list[str]:
    """The image folders every rank must see the same (none when the dataset cannot be read: its gate says why)."""
    try:
        plan = dataset_plan(ctx)
    except Exception:  # noqa: BLE001 - an unreadable dataset is the dataset gate's finding, not this check's
        return []
    return [str(s.path("image_dir")) for s in plan.subsets if s.path("image_dir") is not None]


def _params(ctx: Context) -> dict[str, Any]:
    try:
        precision = accelconfig.effective_mixed_precision(train_args(ctx))[0]
    except Exception:  # noqa: BLE001 - an unreadable training config is args.known's finding
        precision = "no"
    sd = ctx.target.sd_scripts
    return {"sd_scripts": str(sd) if sd else None, "dataset_dirs": _dataset_dirs(ctx), "mixed_precision": precision}


def _command(ctx: Context, plan: LaunchPlan) -> str:
    flags = shlex.join(ctx.target.launch_args) or "(from the accelerate config)"
    return f"{plan.num_processes} processes on {plan.num_machines} machine(s) at {plan.address}, launch flags {flags}"


def _ranks_data(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("host", "rank", "local_rank", "world_size", "device", "backend", "torch", "accelerate",
            "sd_scripts_commit")
    return [{**{k: r.get(k) for k in keys}, **{k: v for k, v in (r.get("memory") or {}).items()}} for r in ranks]


def _met(ctx: Context, plan: LaunchPlan, outcome: Outcome, port_busy: bool) -> Result:
    ranks = sorted(outcome.gathered or [], key=lambda r: r.get("rank", 0))
    data = {"ranks": _ranks_data(ranks), "seconds": round(outcome.seconds, 2)}
    if any(r.get("world_size", 1) < plan.num_processes for r in ranks):
        return Result.fail(f"accelerate started {len(outcome.started)} processes, but each trains alone "
                           f"(world size {ranks[0].get('world_size')}, {ranks[0].get('distributed_type')})",
                           [f"{where(r)}: device {r.get('device')}" for r in ranks], hint=ALONE_HINT, data=data)
    problems = mismatches(ranks)
    if problems:
        return Result.fail(f"the {len(ranks)} processes disagree on what the run depends on ({len(problems)} "
                           "difference(s))", problems, data=data,
                           hint="make every machine the same: the same sd-scripts commit (`git -C <sd-scripts> "
                                "checkout <commit>`), the same packages (`pip install -r requirements.txt` in each "
                                "venv) and the same dataset files (copy the folder)")
    hosts = sorted({str(r.get("host")) for r in ranks})
    summary = (f"{len(ranks)} processes on {len(hosts)} machine(s) met in {outcome.seconds:.1f} s "
               f"({ranks[0].get('backend')}, {ranks[0].get('device')}); every rank agrees")
    details = [f"{where(r)}: {r.get('device')}, torch {r.get('torch')}, accelerate {r.get('accelerate')}"
               for r in ranks]
    if port_busy:
        return Result.warn(f"{summary}, but main_process_port {plan.port} was in use: this accelerate moved the "
                           "rendezvous to another port; accelerate 1.6 (sd-scripts' pin) stops instead",
                           details, hint="pick a free port: --main_process_port 0 (any free port on one machine) "
                                         "or another number", data=data)
    return Result.ok(summary, details, data=data)


def _timed_out(ctx: Context, plan: LaunchPlan, outcome: Outcome) -> tuple[str, list[str]]:
    """What did not answer: the other machines, or the processes of this one."""
    waited = f"the launch did not meet within {ctx.target.rendezvous_timeout:.0f} s at {plan.address}"
    if plan.num_machines <= 1:
        return (f"{waited}: {len(outcome.joined)} of {plan.num_processes} processes got through Accelerator()",
                [f"stuck: RANK {s.get('env', {}).get('rank')} on {s.get('host')}" for s in outcome.started
                 if not any(j.get("pid") == s.get("pid") for j in outcome.joined)])
    others = [str(i) for i in range(plan.num_machines) if i != plan.machine_rank]
    return (f"{waited}: machine_rank {plan.machine_rank} is here, machine_rank {', '.join(others)} did not join",
            [f"each machine's launcher starts its processes only once all {plan.num_machines} machines have "
             f"joined; start the same launch on machine_rank {', '.join(others)} (`lorasetup doctor --launch-args "
             f"'... --machine_rank N'`) and check that {plan.address} is reachable from there "
             f"(`nc -vz {plan.address.replace(':', ' ')}`)"])


def _not_met(ctx: Context, plan: LaunchPlan, outcome: Outcome) -> Result:
    text = outcome.output + "\n".join(str(e.get("error", "")) + "\n" + str(e.get("traceback", ""))
                                      for e in outcome.errors)
    found = known_error(text)
    hint = found[0].hint.format(next_port=plan.port + 1) if found else None
    started = [f"{s.get('host')} (RANK {s.get('env', {}).get('rank')})" for s in outcome.started]
    details = [_command(ctx, plan), f"processes started here: {', '.join(started) or 'none'}"]
    if outcome.timed_out:
        summary, more = _timed_out(ctx, plan, outcome)
        return Result.fail(summary, details + more + ([found[1]] if found else []),
                           hint=hint or "start every machine's launch within the timeout (--rendezvous-timeout), "
                                        "with the main machine's reachable address as main_process_ip")
    line = found[1] if found else last_error_line(text) or f"exit code {outcome.returncode}"
    what = found[0].what if found else "the launch failed before every process met"
    return Result.fail(f"{what}: {line}", details + outcome.output.strip().splitlines()[-6:],
                       hint=hint or "run the same `accelerate launch` by hand to see the whole error")


@check("device.distributed", "a launch of several processes or machines meets through accelerate, and every "
       "rank sees the same setup", tags=("preflight", "probe"), requires=("device.torch",), timeout_s=600.0)
def distributed(ctx: Context) -> Result:
    plan = launch_plan(ctx.target, accelconfig.find_config(ctx.target).path)
    if not plan.distributed:
        return Result.skip("one process on one machine: nothing to rendezvous")
    port_busy = plan.is_main and port_in_use(plan)
    if port_busy and plan.num_machines > 1:
        return Result.fail(f"main_process_port {plan.port} is in use on this machine: the other machines cannot "
                           "meet there", [_command(ctx, plan)],
                           hint=f"pick a free port on every machine: --main_process_port {plan.port + 1}")
    outcome = run_rendezvous(ctx.target, _params(ctx), ctx.target.rendezvous_timeout)
    if outcome.gathered:
        return _met(ctx, plan, outcome, port_busy)
    return _not_met(ctx, plan, outcome)
