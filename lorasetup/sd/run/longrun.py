"""The real run, watched from the first line to the last saved file (`lorasetup train`).

The command is exactly the smoke run's without its overrides. It is stopped, whole process group, at the first
non-finite loss (unless --on-nan warn), a traceback or "No data found", a stall or a load that never ends, a disk
that cannot hold the next save, a checkpoint with NaN/inf tensors, or SIGINT/SIGTERM; every LoRA it saves is
verified as it lands. What happened is a LongRun, which the summary renders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lorasetup.sd.run.checkpoints import Checkpoint, CheckpointTracker, StateDir, last_good, state_dirs
from lorasetup.sd.run.console import Console
from lorasetup.sd.run.guards import DiskGuard, StallGuard
from lorasetup.sd.run.memwatch import MemorySampler, Peaks
from lorasetup.sd.run.plan import RunPlan
from lorasetup.sd.run.stream import Monitor, OutputStops, RunOutcome, run_streaming
from lorasetup.sd.run.watch import Watch

DEFAULT_STALL_TIMEOUT_S = 600.0
DEFAULT_LOAD_TIMEOUT_S = 1800.0
LOAD_TIMEOUT_FACTOR = 5  # with a smoke run: at least this many times its load and first step


@dataclass
class TrainOptions:
    """How the long run is watched (the `lorasetup train` flags)."""

    quiet: bool = False
    on_nan: str = "stop"  # stop | warn
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    load_timeout_s: float | None = None  # None: from the smoke run, at least DEFAULT_LOAD_TIMEOUT_S
    status_interval_s: float = 30.0


def load_timeout(options: TrainOptions, smoke: dict[str, Any] | None) -> float:
    """--load-timeout, else 5 x the smoke run's load and first step, at least 30 min."""
    if options.load_timeout_s is not None:
        return options.load_timeout_s
    measured = [smoke.get("load_s"), smoke.get("first_step_s")] if smoke else []
    before_steps = sum(v for v in measured if isinstance(v, (int, float)))
    return max(DEFAULT_LOAD_TIMEOUT_S, LOAD_TIMEOUT_FACTOR * before_steps)


@dataclass
class LongRun:
    """What happened: the plan, the stream's outcome, every checkpoint and state folder the run wrote."""

    plan: RunPlan
    outcome: RunOutcome
    checkpoints: list[Checkpoint]
    states: list[StateDir]
    started_at: float  # time.time()
    smoke: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    watch_cpu_s: float | None = None  # lorasetup's own CPU time while it watched (all its threads): the cost
    memory: Peaks = field(default_factory=Peaks)  # the process tree's sampled peaks (host, and GPU on CUDA)

    @property
    def watch(self) -> Watch:
        return self.outcome.watch

    @property
    def planned(self) -> int | None:
        """sd-scripts' own total once its bar showed it, else the step plan's (always the plan's for a resumed
        run, whose bar shows more steps than it trains when it starts over at an epoch's beginning)."""
        if self.plan.resumed:
            return self.plan.total_steps
        return self.watch.total or self.plan.total_steps

    @property
    def reached(self) -> bool:
        return self.planned is not None and self.watch.steps_done >= self.planned

    @property
    def first_nonfinite(self) -> int | None:
        return self.watch.nonfinite[0] if self.watch.nonfinite else None

    @property
    def final(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.path.name == self.plan.final_file), None)

    @property
    def broken(self) -> list[Checkpoint]:
        return [c for c in self.checkpoints if c.state == "broken"]

    def last_good(self) -> Checkpoint | None:
        """The latest verified checkpoint saved before the loss turned non-finite."""
        return last_good(self.checkpoints, before_step=self.first_nonfinite)

    @property
    def succeeded(self) -> bool:
        final = self.final
        return (self.outcome.stopped is None and self.outcome.returncode == 0 and self.reached
                and final is not None and final.state == "ok" and not self.broken and self.first_nonfinite is None)


def run_long(plan: RunPlan, options: TrainOptions, console: Console, env: dict[str, str],
             smoke: dict[str, Any] | None = None) -> LongRun:
    """Run the real command under every guard; SIGINT/SIGTERM stop it cleanly (see stream.stop_signals)."""
    started_at, cpu = time.time(), time.process_time()
    watch = Watch(time.monotonic(), on_line=console.line)
    tracker = CheckpointTracker(plan.output_dir, plan.expect, options.on_nan, on_verified=console.checkpoint)
    saves = plan.saves or ([{"step": plan.total_steps, "kind": "final", "file": plan.final_file}]
                           if plan.total_steps else [])
    lora_bytes = smoke.get("output_bytes") if smoke else None
    monitors: list[Monitor] = [
        OutputStops(options.on_nan),
        StallGuard(options.stall_timeout_s, load_timeout(options, smoke)),
        DiskGuard(plan.output_dir, saves, tracker, console.note, lora_bytes, plan.save_state, plan.state_on_end),
        tracker, console]
    sampler = MemorySampler()
    outcome = run_streaming(plan.argv, timeout=None, echo=None, env=env, watch=watch, monitors=monitors,
                            signals=True, sampler=sampler)
    checkpoints = tracker.finish(watch)
    console.close(watch, time.monotonic())
    return LongRun(plan, outcome, checkpoints, state_dirs(plan.output_dir, since=started_at - 1), started_at, smoke,
                   console.notes, time.process_time() - cpu, sampler.peaks)
