"""The smoke run's memory proof: its steps train at the dataset's largest bucket, and its peak memory is
measured from outside the process and set beside the preflight estimate (lorasetup.sd.memory).

Largest bucket: when the dataset has more than one bucket, the smoke command gets `--dataset_config` of a
temporary config holding only that bucket's images with the run's own settings (lorasetup.sd.dataset.largest),
so every step meets the worst case instead of whichever buckets the shuffle draws.

Measured: the trainer's high-water mark (the kernel's ru_maxrss, exact), the whole process tree's memory
(sampled) and, on CUDA, the tree's GPU memory from nvidia-smi (sampled; MPS memory cannot be read from outside).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import CheckFailed, Result
from lorasetup.sd import stackprobe
from lorasetup.sd.dataset.largest import ImpossibleSteps, largest_bucket, largest_bucket_config
from lorasetup.sd.dataset.schema import ConfigSyntaxError
from lorasetup.sd.devices import machine_offers
from lorasetup.sd.memory.estimate import Estimate, estimate
from lorasetup.sd.memory.inputs import NotEstimated, on_device, run_facts
from lorasetup.sd.run.memwatch import MemorySampler, Peaks
from lorasetup.sd.run.stream import RunOutcome
from lorasetup.sd.run.units import size

OFF_BY = 0.20  # a measured peak this far above the estimate is pointed out


def largest_bucket_args(ctx: Context, temp: Path) -> tuple[list[str], str, dict[str, Any]]:
    """Arguments that put every smoke step at the largest bucket, the line saying how, and its data."""
    try:
        bucket = largest_bucket(ctx)
    except (ImpossibleSteps, ConfigSyntaxError, CheckFailed) as exc:
        return [], f"largest bucket unknown ({exc}): the steps run at whatever buckets the shuffle draws", {}
    if bucket is None:
        return [], "largest bucket unknown (no image with a readable size)", {}
    try:
        path, line = largest_bucket_config(ctx, bucket, temp / "largest-bucket")
    except OSError as exc:
        path, line = None, f"largest-bucket dataset config not written ({exc}): the steps run at random buckets"
    width, height = bucket.resolution
    data = {"width": width, "height": height, "batch_size": bucket.batch_size,
            "dataset_config": str(path) if path else None, "how": line}
    return ([f"--dataset_config={path}"] if path else []), line, data


def device(ctx: Context) -> str | None:
    """The device the run trains on: the Target's, else what the stack probe says the machine offers."""
    if ctx.target.device != "auto":
        return ctx.target.device
    try:
        return machine_offers(stackprobe.facts(ctx))
    except ProbeError:
        return None


def sampler(ctx: Context) -> MemorySampler:
    return MemorySampler(device=ctx.target.device)


def estimated(ctx: Context) -> tuple[Estimate | None, str | None]:
    """The preflight estimate for this run, or why there is none (the probe is asked for the device only
    when an estimate can be made)."""
    try:
        facts = run_facts(ctx)
    except NotEstimated as exc:
        return None, f"no estimate: {exc}"
    where = device(ctx)
    if where is None:
        return None, "no estimate: the training interpreter's probe failed"
    return estimate(on_device(facts, where).run), None


def _size(value: int | None) -> str:
    return size(value) if value else "n/a"


def memory_figures(outcome: RunOutcome, peaks: Peaks, found: Estimate | None) -> dict[str, Any]:
    """Measured beside estimated, in bytes."""
    return {"measured_trainer_peak_bytes": outcome.peak_rss_bytes, "measured_tree_peak_bytes": peaks.host_bytes,
            "measured_device_peak_bytes": peaks.device_bytes, "device_source": peaks.device_source,
            "estimated_peak_bytes": found.peak_bytes if found else None,
            "estimated_load_bytes": found.load_host_bytes if found else None,
            "estimated_device": found.device if found else None}


def memory_line(figures: dict[str, Any]) -> str:
    """One line: what was measured and what was estimated."""
    device_name = figures["estimated_device"]
    measured = (figures["measured_device_peak_bytes"] if device_name == "cuda"
                else figures["measured_trainer_peak_bytes"])
    if device_name == "cuda":
        seen = f"GPU {_size(measured)} (nvidia-smi)" if measured else "GPU not measured (no nvidia-smi answer)"
    else:
        seen = f"trainer {_size(measured)} RAM (kernel high-water mark)"
    gpu_note = ", GPU memory cannot be read from outside on MPS" if device_name == "mps" else ""
    line = (f"peak memory: {seen}, process tree {_size(figures['measured_tree_peak_bytes'])}{gpu_note}; "
            f"estimated {_size(figures['estimated_peak_bytes'])}")
    estimate = figures["estimated_peak_bytes"]
    if measured and estimate and measured > estimate * (1 + OFF_BY):
        line += f" (measured {100 * (measured / estimate - 1):.0f}% above the estimate)"
    return line


def add_memory(result: Result, outcome: RunOutcome, peaks: Peaks, found: Estimate | None, note: str | None,
               bucket_line: str, bucket_data: dict[str, Any]) -> None:
    """Put the memory figures and the largest-bucket line into the smoke result."""
    figures = memory_figures(outcome, peaks, found)
    result.data["memory"] = {**figures, "largest_bucket": bucket_data}
    result.details[:0] = [bucket_line, memory_line(figures)] + ([note] if note else [])
