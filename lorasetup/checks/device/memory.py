"""device.memory and device.load_ram: will the run fit in memory, said before it starts.

The estimate (lorasetup.sd.memory.estimate, inputs from lorasetup.sd.memory.inputs) against what the device
offers: on CUDA the visible GPU's free memory now (nvidia-smi; torch's total without it), on MPS Metal's
recommended working set (the stack probe), on the CPU the available RAM now (lorasetup.sd.memory.machine reads
both fresh every run).
Above the device's limit the run dies ("CUDA out of memory" at the first large bucket, "MPS backend out of
memory", or the OS killing it); above 85% it is one background program away from that. Each figure is in
Result.data in bytes, with every change that would lower the peak and by how much.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from lorasetup.checks import check
from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import Result
from lorasetup.sd import stackprobe
from lorasetup.sd.devices import machine_offers
from lorasetup.sd.memory.estimate import (
    GIB,
    MPS_HIGH_WATERMARK_RATIO,
    Estimate,
    Run,
    candidate_changes,
    estimate,
    savings,
)
from lorasetup.sd.memory.inputs import NotEstimated, RunFacts, run_facts
from lorasetup.sd.memory.machine import MemoryFacts, memory_facts
from lorasetup.sd.run.units import size
from lorasetup.sd.stackfacts import StackFacts

PROBED = ("preflight", "probe")
WARN_RATIO = 0.85
GREEDY_ROUNDS = 6
# How a run that does not fit dies, by device (reference/failure-modes.md G2, G3).
DEATH = {"cuda": 'dies with "CUDA out of memory"', "mps": 'dies with "MPS backend out of memory"',
         "cpu": 'is killed by the OS ("Killed", no traceback)'}


@dataclass(frozen=True)
class Capacity:
    """What the device offers the run: `available_bytes` (what the estimate must fit in), `limit_bytes` (where
    allocations fail; above `available_bytes` only on MPS), `total_bytes`, and how it was read."""

    available_bytes: int
    limit_bytes: int
    total_bytes: int
    label: str


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def device_of(ctx: Context, found: StackFacts) -> str:
    return ctx.target.device if ctx.target.device != "auto" else machine_offers(found)


def host_capacity(memory: MemoryFacts) -> Capacity | None:
    available, total = memory.host_available_bytes, memory.host_total_bytes
    if available is None or total is None:
        return None
    return Capacity(available, available, total, f"{gib(available)} of {gib(total)} RAM available")


def visible_gpus(found: StackFacts) -> set[int] | None:
    """The machine's GPU indices the run sees (CUDA_VISIBLE_DEVICES from accelerate launch or the environment);
    None: all of them."""
    launch = found.accelerate.launch if found.accelerate else None
    raw = (launch.env if launch else {}).get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    if raw is None or not all(p.strip().isdigit() for p in raw.split(",") if p.strip()):
        return None
    return {int(p) for p in raw.split(",") if p.strip()}


def cuda_capacity(found: StackFacts, memory: MemoryFacts) -> Capacity | None:
    """The visible GPU with the least free memory (each process of a multi-GPU run gets one): nvidia-smi's free
    figure now; torch's total when nvidia-smi cannot say."""
    visible = visible_gpus(found)
    gpus = [g for g in memory.gpus if visible is None or g.index in visible]
    if gpus:
        gpu = min(gpus, key=lambda g: g.free_bytes)
        used = gpu.total_bytes - gpu.free_bytes
        taken = f", {gib(used)} already in use" if used > 256 * 1024 ** 2 else ""
        return Capacity(gpu.free_bytes, gpu.free_bytes, gpu.total_bytes,
                        f"{gpu.name}: {gib(gpu.free_bytes)} free of {gib(gpu.total_bytes)}{taken} (nvidia-smi)")
    devices = found.torch.cuda_devices if found.torch else ()
    if not devices:
        return None
    total = min(d.total_memory for d in devices)
    return Capacity(total, total, total, f"{devices[0].name}: {gib(total)} (torch; free memory unknown without "
                                         "nvidia-smi, counted as all free)")


def mps_capacity(found: StackFacts, memory: MemoryFacts) -> Capacity | None:
    """Metal's recommended working set; PyTorch fails allocations beyond PYTORCH_MPS_HIGH_WATERMARK_RATIO x it."""
    recommended = found.torch.mps_recommended_max_memory if found.torch else None
    if not isinstance(recommended, int):
        return None
    try:
        ratio = float(os.environ.get("PYTORCH_MPS_HIGH_WATERMARK_RATIO", MPS_HIGH_WATERMARK_RATIO))
    except ValueError:
        ratio = MPS_HIGH_WATERMARK_RATIO
    limit = int(recommended * ratio) if ratio > 0 else 2 ** 62
    total = memory.host_total_bytes or recommended
    return Capacity(recommended, limit, total, f"Metal's recommended working set {gib(recommended)} of "
                                               f"{gib(total)} unified memory (allocations fail above {gib(limit)})")


def capacity(found: StackFacts, memory: MemoryFacts, device: str) -> Capacity | None:
    if device == "cuda":
        return cuda_capacity(found, memory)
    if device == "mps":
        return mps_capacity(found, memory)
    return host_capacity(memory) if device == "cpu" else None


def fitting_plan(run: Run, budget: int) -> tuple[list[str], int]:
    """Changes, biggest saving first, until the estimate fits `budget` (at most GREEDY_ROUNDS of them)."""
    chosen: list[str] = []
    current = run
    for _ in range(GREEDY_ROUNDS):
        peak = estimate(current).peak_bytes
        if peak <= budget:
            break
        options = [(peak - estimate(other).peak_bytes, change, other) for change, other in candidate_changes(current)]
        options = [o for o in options if o[0] > 0]
        if not options:
            break
        _, change, current = max(options, key=lambda o: o[0])
        chosen.append(change)
    return chosen, estimate(current).peak_bytes


def breakdown(found: Estimate) -> list[str]:
    parts = sorted(found.parts.items(), key=lambda kv: -kv[1])
    return ["estimate: " + ", ".join(f"{name.removesuffix('_bytes').replace('_', ' ')} {size(value)}"
                                     for name, value in parts if value)]


def describe(facts: RunFacts) -> str:
    run, bucket = facts.run, facts.bucket
    where = f", {bucket.place}" if bucket else ""
    return (f"{run.family} on {run.device}: batch {run.batch} x {run.width}x{run.height} (the largest bucket"
            f"{where}), mixed_precision {run.mixed_precision}, network_dim {run.network_dim}, {run.optimizer}, "
            f"gradient_checkpointing {'on' if run.gradient_checkpointing else 'off'}, {run.attention} attention")


def memory_data(found: Estimate, cap: Capacity, facts: RunFacts) -> dict[str, Any]:
    run = facts.run
    return {"device": run.device, "estimate_peak_bytes": found.peak_bytes, "available_bytes": cap.available_bytes,
            "limit_bytes": cap.limit_bytes, "total_bytes": cap.total_bytes, "load_peak_bytes": found.load_host_bytes,
            **found.parts, "bucket": {"width": run.width, "height": run.height, "batch_size": run.batch},
            "savings": [{"change": s.change, "saving_bytes": s.saving_bytes} for s in savings(run)]}


def _inputs(ctx: Context, host: bool) -> tuple[RunFacts, Capacity, Estimate] | Result:
    """The estimate's inputs, what the device (or with `host`, the RAM) offers and the estimate; or the skip
    that says why there is none."""
    try:
        found = stackprobe.facts(ctx)
    except ProbeError as exc:
        return Result.skip(f"needs the training interpreter's answer, which failed: {str(exc).splitlines()[0]}",
                           hint="see device.torch")
    try:
        facts = run_facts(ctx, device_of(ctx, found))
    except NotEstimated as exc:
        return Result.skip(f"no memory estimate: {exc}")
    memory = memory_facts(ctx)
    cap = host_capacity(memory) if host else capacity(found, memory, facts.run.device)
    if cap is None:
        what = "RAM" if host else facts.run.device
        why = "; ".join(memory.notes) or f"no memory figures for {what}"
        return Result.skip(f"not estimated: {why}")
    return facts, cap, estimate(facts.run)


def _figures(facts: RunFacts, cap: Capacity, found: Estimate) -> tuple[int, dict[str, Any], list[str]]:
    """What the device holds beside the estimate (on the CPU `accelerate launch` stays alive beside the
    trainer), the data and the lines."""
    run = facts.run
    data = memory_data(found, cap, facts)
    details = [describe(facts), *breakdown(found), f"device: {cap.label}", *facts.notes]
    if run.device != "cpu":
        return 0, data, details
    data["estimate_peak_bytes"] = found.peak_bytes + found.launcher_bytes
    stage = "loading" if found.load_host_bytes > found.train_bytes else "training"
    details.insert(2, f"the trainer {gib(found.peak_bytes)} (its peak: {stage}) + `accelerate launch` "
                      f"{gib(found.launcher_bytes)}")
    return found.launcher_bytes, data, details


def _verdict(run: Run, peak: int, extra: int, cap: Capacity, details: list[str], data: dict[str, Any]) -> Result:
    """ok below WARN_RATIO of what is available; else what to change, and fail where allocations fail. `peak`
    includes `extra`, what the device holds beside the trainer."""
    head = f"about {gib(peak)} needed, {gib(cap.available_bytes)} available ({100 * peak / cap.available_bytes:.0f}%)"
    if peak <= WARN_RATIO * cap.available_bytes:
        return Result.ok(head, details, data=data)
    plan, after = fitting_plan(run, int(WARN_RATIO * cap.available_bytes) - extra)
    details += [f"saves {gib(s['saving_bytes'])}: {s['change']}" for s in data["savings"]]
    hint = (f"set {'; '.join(plan)} (estimate then {gib(after + extra)})" if plan else
            "no setting lowers the estimate enough: use a device with more memory")
    if peak > cap.limit_bytes:
        return Result.fail(f"does not fit: {head}; the run {DEATH[run.device]} at the largest bucket", details,
                           hint=hint, data=data)
    if peak > cap.available_bytes:  # MPS only: past the working set, below PyTorch's limit
        return Result.warn(f"{head}: above Metal's recommended working set, macOS swaps and training slows "
                           "many times", details, hint=hint, data=data)
    return Result.warn(f"tight: {head}; another program's memory can push it over", details, hint=hint, data=data)


@check("device.memory", "the training step fits the device's memory at the largest bucket", tags=PROBED,
       requires=("device.torch",), prefetch=stackprobe.start, timeout_s=stackprobe.TIMEOUT_S + 10)
def device_memory(ctx: Context) -> Result:
    got = _inputs(ctx, host=False)
    if isinstance(got, Result):
        return got
    facts, cap, found = got
    extra, data, details = _figures(facts, cap, found)
    return _verdict(facts.run, found.peak_bytes + extra, extra, cap, details, data)


@check("device.load_ram", "the checkpoint loads into RAM without the OS killing the run", tags=PROBED,
       requires=("device.torch",), prefetch=stackprobe.start, timeout_s=stackprobe.TIMEOUT_S + 10)
def load_ram(ctx: Context) -> Result:
    got = _inputs(ctx, host=True)
    if isinstance(got, Result):
        return got
    facts, cap, result = got
    run = facts.run
    peak = result.load_host_bytes + result.launcher_bytes
    data = {"load_peak_bytes": result.load_host_bytes, "launcher_bytes": result.launcher_bytes,
            "estimate_peak_bytes": peak, "available_bytes": cap.available_bytes, "total_bytes": cap.total_bytes,
            "train_host_bytes": result.host_train_bytes}
    model = "+".join(name for name in run.components)
    details = [f"{run.family} checkpoint {gib(run.file_bytes)} on disk, read whole and converted to the training "
               f"modules ({model}): about {gib(result.load_host_bytes)} in the trainer, plus "
               f"{gib(result.launcher_bytes)} for `accelerate launch`", f"RAM: {cap.label}", *facts.notes]
    head = f"loading needs about {gib(peak)} of RAM, {gib(cap.available_bytes)} available"
    hint = "close other programs, add swap, or train on a machine with more RAM"
    if run.device == "cuda" and not run.lowram:
        lowered = estimate(replace(run, lowram=True))
        hint += (f"; --lowram builds the models on the GPU (RAM then about "
                 f"{gib(lowered.load_host_bytes + lowered.launcher_bytes)}, GPU about {gib(lowered.device_load_bytes)}"
                 " while loading)")
    if peak > cap.available_bytes:
        return Result.fail(f"{head}: the OS kills the run while the model loads (\"Killed\", no traceback)",
                           details, hint=hint, data=data)
    if peak > WARN_RATIO * cap.available_bytes:
        return Result.warn(f"tight: {head}", details, hint=hint, data=data)
    return Result.ok(head, details, data=data)
