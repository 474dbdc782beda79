"""Memory estimate vs measured peak: real sd-scripts LoRA runs on this machine's CPU, one grid row per run.

Each row is a real `accelerate launch train_network.py` run (the command lorasetup builds) of 1-2 steps over a
small dataset, with the row's resolution, batch size, network_dim, gradient_checkpointing and cache_latents.
Its peak is measured from outside: the kernel's high-water mark of the training process (wait4's ru_maxrss
through lorasetup.sd.run.stream.run_streaming; the trainer is the tree's biggest process) and the sampled sum of
the whole tree (lorasetup.sd.run.memwatch). The estimate is lorasetup.sd.memory.estimate's for the same Target, computed
without running anything. Runs take the bed lock one at a time (the same lock `flock /tmp/lorasetup-bed.lock`
takes), so they never overlap with another engineer's training run.

Measurements are appended to a JSON file as they finish, so an interrupted grid resumes where it stopped and
the table can be printed again later (with the current estimator) without re-running:

    python benchmarks/bench_memory.py --bed ~/bed run [--rows 256-b1-d8-gc0-cl0,...] [--grid full|subset]
    python benchmarks/bench_memory.py --bed ~/bed table
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from lorasetup.engine.context import Context
from lorasetup.engine.target import Target
from lorasetup.sd.run.command import real_command, run_env
from lorasetup.sd.run.memwatch import MemorySampler
from lorasetup.sd.run.stream import run_streaming

LOCK = Path("/tmp/lorasetup-bed.lock")
RESULTS = Path(__file__).with_name("data") / "memory-calibration-cpu.json"
GIB = 1024 ** 3
TOLERANCE = 0.20
RUN_TIMEOUT_S = 1500.0
PAUSE_S = 3.0


@dataclass(frozen=True)
class Row:
    """One grid point."""

    resolution: int
    batch: int
    dim: int
    gc: bool
    cache_latents: bool
    attention: str = "sdpa"  # sdpa | plain (neither --sdpa nor --xformers nor --mem_eff_attn)
    steps: int = 1

    @property
    def key(self) -> str:
        attn = "" if self.attention == "sdpa" else f"-{self.attention}"
        return (f"{self.resolution}-b{self.batch}-d{self.dim}-gc{int(self.gc)}-cl{int(self.cache_latents)}"
                f"{attn}")


def steps(resolution: int) -> int:
    """2 steps where training sets the peak (512 px): the second step's peak is higher than the first's (the
    optimizer state exists and the allocator holds the first step's freed blocks). At 256 px loading sets it."""
    return 2 if resolution >= 512 else 1


def full_grid() -> list[Row]:
    """resolution 256/512 x batch 1/2 x network_dim 8/32/128 x gradient_checkpointing x cache_latents."""
    return [Row(r, b, d, gc, cl, steps=steps(r)) for r, b, d, gc, cl in
            itertools.product((256, 512), (1, 2), (8, 32, 128), (False, True), (False, True))]


def subset_grid() -> list[Row]:
    """A representative subset: every axis value appears in both resolutions, plus plain attention rows."""
    picks = [(1, 8, False, False), (1, 8, True, True), (2, 8, False, True), (2, 32, True, False),
             (1, 128, False, True), (2, 128, True, True), (1, 32, False, False), (2, 32, False, False)]
    rows = [Row(r, b, d, gc, cl, steps=steps(r)) for r in (512, 256) for b, d, gc, cl in picks]  # 512 first
    return rows + [Row(256, 1, 8, False, False, "plain"), Row(512, 1, 8, False, False, "plain", steps=2),
                   Row(512, 1, 8, True, False, "plain", steps=2)]


def row_target(bed: Path, row: Row, work: Path) -> Target:
    """The Target of one row: the bed's checkout, venv and checkpoint, a dataset TOML at the row's size."""
    dataset = work / "dataset.toml"
    images = bed / "data" / "tiny" / "img"  # 4 captioned 256 px images, all in the one square bucket
    dataset.write_text(f"""[general]
enable_bucket = true  # the 256 px images are scaled up to the one square bucket at 512
caption_extension = ".txt"

[[datasets]]
resolution = {row.resolution}
batch_size = {row.batch}

  [[datasets.subsets]]
  image_dir = '{images}'
  num_repeats = 1
""")
    args = ["--network_module=networks.lora", f"--network_dim={row.dim}", f"--network_alpha={row.dim}",
            "--optimizer_type=AdamW", "--mixed_precision=no", "--learning_rate=1e-4", f"--max_train_steps={row.steps}",
            f"--tokenizer_cache_dir={bed / 'tokenizer_cache'}", "--output_name=bench", "--seed=42",
            "--save_model_as=safetensors"]
    args += ["--gradient_checkpointing"] if row.gc else []
    args += ["--cache_latents"] if row.cache_latents else []
    args += ["--sdpa"] if row.attention == "sdpa" else []
    return Target(kohya_root=bed / "sd-scripts", python=bed / "venv" / "bin" / "python", script="train_network.py",
                  dataset_config=dataset, base_model=bed / "models" / "sd15-random.safetensors",
                  output_dir=work / "out", device="cpu", accelerate_config=bed / "accelerate_cpu.yaml",
                  train_args=args)


def measure(bed: Path, row: Row, log_dir: Path) -> dict[str, Any]:
    """Run one row under the bed lock and return its measured figures."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-memory-{row.key}-"))
    try:
        target = row_target(bed, row, work)
        argv = real_command(target)
        env = {**run_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            free_before = psutil.virtual_memory().available
            sampler = MemorySampler(device="cpu")
            with (log_dir / f"{row.key}.log").open("w") as log:
                log.write("$ " + " ".join(argv) + "\n")
                log.flush()
                outcome = run_streaming(argv, timeout=RUN_TIMEOUT_S, echo=log, env=env, sampler=sampler)
        peaks = sampler.peaks
        return {"row": asdict(row), "key": row.key, "returncode": outcome.returncode, "stopped": outcome.stopped,
                "steps_done": outcome.watch.steps_done, "wall_s": round(outcome.wall_s, 1),
                "trainer_peak_rss_bytes": outcome.peak_rss_bytes, "tree_peak_rss_bytes": peaks.host_bytes,
                "samples": peaks.samples, "available_before_bytes": free_before,
                "error": outcome.watch.real_error(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return {r["key"]: r for r in json.loads(path.read_text())["runs"]}


def save_results(path: Path, results: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    note = ("Measured by benchmarks/bench_memory.py: real sd-scripts 48d368fa train_network.py runs on a 2-core "
            "x86_64 CPU (torch 2.14.1+cu130 build running on the CPU), random-weight SD1.5 checkpoint (fp16 file), "
            "mixed_precision no, AdamW, networks.lora, 4 captioned images resized to the row's resolution.")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"note": note, "runs": list(results.values())}, indent=1) + "\n")
    os.replace(tmp, path)


def run(bed: Path, rows: list[Row], path: Path, rerun: bool) -> None:
    results = load_results(path)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-memory-logs-"))
    print(f"logs: {log_dir}", flush=True)
    for row in rows:
        if row.key in results and not rerun and results[row.key].get("returncode") == 0:
            print(f"{row.key}: measured before, kept", flush=True)
            continue
        time.sleep(PAUSE_S)  # between runs, so another engineer waiting for the bed lock gets it
        start = time.monotonic()
        result = measure(bed, row, log_dir)
        results[row.key] = result
        save_results(path, results)
        peak = result["trainer_peak_rss_bytes"]
        print(f"{row.key}: exit {result['returncode']} ({result['stopped'] or 'ran'}), {result['steps_done']} steps, "
              f"trainer peak {peak / GIB if peak else float('nan'):.2f} GiB, tree peak "
              f"{(result['tree_peak_rss_bytes'] or 0) / GIB:.2f} GiB, {time.monotonic() - start:.0f} s"
              + (f", error: {result['error']}" if result["returncode"] else ""), flush=True)


def estimate_row(bed: Path, row: Row) -> Any:
    """lorasetup's estimate for one row (the same path the device.memory check takes, with the CPU device)."""
    from lorasetup.sd.memory.inputs import estimate_for_target  # noqa: PLC0415 - only the table needs it
    work = Path(tempfile.mkdtemp(prefix="bench-memory-est-"))
    try:
        with Context(row_target(bed, row, work)) as ctx:
            return estimate_for_target(ctx, device="cpu")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(bed: Path, path: Path) -> int:
    """Print estimate vs measured for every measured row; exit 1 when a row is off by more than 20%."""
    results = load_results(path)
    print("| row | res | batch | dim | grad ckpt | cache latents | attention | steps | measured trainer peak (GiB) | "
          "process tree (GiB) | estimate (GiB) | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst, bad, shown = 0.0, 0, 0
    for key, result in sorted(results.items(), key=lambda kv: (kv[1]["row"]["attention"], kv[0])):
        row = Row(**result["row"])
        measured = result.get("trainer_peak_rss_bytes")
        if result.get("returncode") != 0 or not measured:
            print(f"| {key} | run failed: {result.get('error')} |")
            continue
        estimate = estimate_row(bed, row).peak_bytes
        error = estimate / measured - 1
        worst, bad, shown = max(worst, abs(error)), bad + (abs(error) > TOLERANCE), shown + 1
        print(f"| {key} | {row.resolution} | {row.batch} | {row.dim} | {'on' if row.gc else 'off'} | "
              f"{'on' if row.cache_latents else 'off'} | {row.attention} | {result['steps_done']} | "
              f"{measured / GIB:.2f} | {(result.get('tree_peak_rss_bytes') or 0) / GIB:.2f} | {estimate / GIB:.2f} | "
              f"{100 * error:+.1f}% |")
    print(f"\n{shown} rows; worst error {100 * worst:.1f}%; {bad} outside +-{100 * TOLERANCE:.0f}%")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bed", type=Path, default=Path("~/bed").expanduser())
    ap.add_argument("--results", type=Path, default=RESULTS)
    sub = ap.add_subparsers(dest="command", required=True)
    run_ap = sub.add_parser("run", help="run grid rows (one at a time, under the bed lock)")
    run_ap.add_argument("--grid", choices=("full", "subset"), default="subset")
    run_ap.add_argument("--rows", help="comma-separated row keys (e.g. 256-b1-d8-gc0-cl0); default: the grid")
    run_ap.add_argument("--rerun", action="store_true", help="run rows again even when measured before")
    sub.add_parser("table", help="print estimate vs measured for the measured rows")
    opts = ap.parse_args()
    bed = opts.bed.expanduser()
    if opts.command == "table":
        return table(bed, opts.results)
    rows = full_grid() if opts.grid == "full" else subset_grid()
    if opts.rows:
        every = {r.key: r for r in full_grid() + subset_grid()}
        unknown = [k for k in opts.rows.split(",") if k not in every]
        if unknown:
            print(f"unknown rows: {', '.join(unknown)}", file=sys.stderr)
            return 2
        rows = [every[k] for k in opts.rows.split(",")]
    run(bed, rows, opts.results, opts.rerun)
    return 0


if __name__ == "__main__":
    sys.exit(main())
