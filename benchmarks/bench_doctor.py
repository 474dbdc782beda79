"""Time a full `lorasetup doctor` (no smoke) against one bare import of the training stack, side by side.

    python benchmarks/bench_doctor.py --kohya-root ~/bed/sd-scripts --python ~/bed/venv/bin/python \
        [--device cpu] [--repeat 5]

Each round runs, one after the other in fresh processes (so each sees the same machine load):
- bare:   `<python> -c 'import torch, accelerate, transformers, diffusers'` in the training venv (transformers
          and diffusers import lazily: their models load on first use);
- script: `<python> -c 'import train_network'` from the sd-scripts folder: everything the run itself imports
          before training (the floor for any check that really imports what the run imports);
- doctor: `lorasetup doctor` over every preflight check (the stack probe imports torch and accelerate once,
          collects the device facts, builds an Accelerator and really imports every module and name the run
          imports, while the static checks run);
- shallow: `lorasetup doctor --skip deps.deep`: the device probe imports torch and accelerate only;
- static: `lorasetup doctor --skip <every probe-tagged check>`, what answers without importing the stack.
Prints the median of each, the ratios to bare, and the stack probe's own stage timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.target import load_target
from lorasetup.sd import stackprobe

BARE = "import torch, accelerate, transformers, diffusers"


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # doctor exits 1 when a check fails; that is still a full run
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kohya-root", required=True)
    parser.add_argument("--python", required=True, help="the training interpreter")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    target_flags = ["--kohya-root", args.kohya_root, "--python", args.python, "--device", args.device]
    doctor = [sys.executable, "-m", "lorasetup.cli", "doctor", *target_flags]
    probed = sorted(c.id for c in all_checks() if "probe" in c.tags)
    static = [*doctor, "--skip", *probed]
    shallow = [*doctor, "--skip", "deps.deep"]
    target = load_target({"kohya_root": args.kohya_root, "python": args.python, "device": args.device})
    entry = Path(target.script).stem
    script = [args.python, "-c", f"import {entry}"]
    runs: dict[str, list[float]] = {"bare": [], "script": [], "doctor": [], "shallow": [], "static": []}
    timed([args.python, "-c", BARE])  # warm the file cache once; not counted
    for _ in range(args.repeat):
        runs["bare"].append(timed([args.python, "-c", BARE]))
        runs["script"].append(timed(script, cwd=target.sd_scripts))
        runs["doctor"].append(timed(doctor))
        runs["shallow"].append(timed(shallow))
        runs["static"].append(timed(static))
    med = {name: statistics.median(values) for name, values in runs.items()}

    print(f"training interpreter: {args.python}; device {args.device}; {args.repeat} rounds, medians")
    print(f"  bare    {med['bare']:6.2f} s   python -c '{BARE}'")
    print(f"  script  {med['script']:6.2f} s   python -c 'import {entry}' in {target.sd_scripts}")
    print(f"  doctor  {med['doctor']:6.2f} s   lorasetup doctor (every preflight check, no smoke)")
    print(f"  shallow {med['shallow']:6.2f} s   lorasetup doctor --skip deps.deep")
    print(f"  static  {med['static']:6.2f} s   lorasetup doctor --skip {' '.join(probed)}")
    print(f"  doctor / bare = {med['doctor'] / med['bare']:.2f}x   doctor / script = "
          f"{med['doctor'] / med['script']:.2f}x   shallow / bare = {med['shallow'] / med['bare']:.2f}x   "
          f"static / bare = {med['static'] / med['bare']:.2f}x")
    print("  all runs: " + json.dumps({k: [round(v, 2) for v in vs] for k, vs in runs.items()}))

    ctx = Context(target)
    try:
        answer = stackprobe.facts(ctx)
    finally:
        ctx.close()
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in answer.timings.items())
    print(f"  stack probe stages (one more run): {stages}; {len(answer.imports)} modules and "
          f"{len(answer.from_imports)} names imported")


if __name__ == "__main__":
    main()
