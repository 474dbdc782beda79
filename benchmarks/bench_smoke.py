"""Smoke-run overhead: the raw training command vs `lorasetup smoke` on the same target, side by side.

The raw command is exactly the one `lorasetup smoke` launches (same overrides, a fresh output folder), run
directly with its output to a file. `lorasetup smoke` adds its own start-up, the repo checks, the live parsing
of the output and the check of the saved LoRA. Pairs alternate who goes first, `--repeat` times. On a
shared machine the pair's ratio is noisy; lorasetup's own time (its total minus the training process's wall
time) is the noise-free part of the overhead and is printed too.

    python benchmarks/bench_smoke.py [--repeat N] -- --kohya-root ~/sd-scripts --python ~/venv/bin/python \\
        --dataset-config data.toml --train-config train.toml [-- sd-scripts args]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorasetup.cli import build_parser, make_target, split_passthrough
from lorasetup.engine.context import Context
from lorasetup.sd.run.command import run_env, smoke_plan
from lorasetup.sd.trainargs import train_args


def timed(argv: list[str], log: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(argv, env=run_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=fh,
                              text=True, check=False)
    return time.perf_counter() - start, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("lorasetup_args", nargs=argparse.REMAINDER, help="after --: lorasetup smoke's own flags")
    opts = ap.parse_args()
    args = opts.lorasetup_args[1:] if opts.lorasetup_args[:1] == ["--"] else opts.lorasetup_args
    own, extra = split_passthrough(["smoke", *args])
    target = make_target(build_parser().parse_args(own), extra)
    ctx = Context(target)
    logs = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    rows = []
    for i in range(opts.repeat):
        temp = logs / f"raw-{i}"
        temp.mkdir()
        plan = smoke_plan(target, train_args(ctx).config_file, bool(train_args(ctx).get("logging_dir")), temp,
                          target.smoke_steps)
        smoke_argv = [sys.executable, "-m", "lorasetup.cli", *own, "--json", *(["--", *extra] if extra else [])]
        pair = {}
        for kind in (("raw", "smoke") if i % 2 == 0 else ("smoke", "raw")):  # alternate who goes first
            if kind == "raw":
                pair["raw"] = timed(plan.argv, logs / f"raw-{i}.log")
            else:
                pair["smoke"] = timed(smoke_argv, logs / f"smoke-{i}.log")
        (raw_s, raw), (smoke_s, smoke) = pair["raw"], pair["smoke"]
        raw_ok = raw.returncode == 0 and plan.output.is_file()
        shutil.rmtree(temp)
        data = json.loads(smoke.stdout).get("smoke", {}) if smoke.stdout.strip() else {}
        own_s = smoke_s - data.get("wall_s", smoke_s)
        rows.append((raw_s, raw_ok, smoke_s, smoke.returncode, own_s))
        print(f"pair {i + 1}: raw {raw_s:6.1f} s (exit {raw.returncode}, LoRA {'saved' if raw_ok else 'MISSING'}) | "
              f"lorasetup smoke {smoke_s:6.1f} s (exit {smoke.returncode}) | ratio {smoke_s / raw_s:.3f} | "
              f"lorasetup's own time {own_s:.2f} s outside the training process", flush=True)
        print(f"        smoke's figures: load {data.get('load_s')} s, {data.get('s_per_step')} s/step, "
              f"steps {data.get('steps_done')}, peak RSS {data.get('peak_rss_mb')} MiB", flush=True)
    raw_total = sum(r[0] for r in rows)
    smoke_total = sum(r[2] for r in rows)
    own_total = sum(r[4] for r in rows)
    print(f"\ntotal over {len(rows)} pair(s): raw {raw_total:.1f} s, lorasetup smoke {smoke_total:.1f} s, "
          f"ratio {smoke_total / raw_total:.3f}")
    print(f"lorasetup's own time (smoke total minus the training process's wall time): {own_total:.2f} s = "
          f"{100 * own_total / raw_total:.1f}% of the raw runs (the noise-free part of the overhead)")
    print(f"logs: {logs}")
    ctx.close()
    return 0 if all(r[1] and r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
