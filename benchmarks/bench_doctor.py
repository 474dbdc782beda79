"""Time to verdict, side by side in one run: cold and warm doctor and preflight gates, against the imports of
the training stack, and how soon a static fault is on screen.

    python benchmarks/bench_doctor.py --kohya-root ~/bed/sd-scripts --python ~/bed/venv/bin/python \
        [--dataset-config ~/bed/data/spyke/dataset.toml] [--device cpu] [--repeat 5]

Each round runs, one after the other in fresh processes (so each sees the same machine load):
- bare / script: `python -c 'import torch, accelerate, transformers, diffusers'` in the training venv, and
  `python -c 'import train_network'` from the sd-scripts folder (everything the run imports before training);
- cold / warm doctor: `lorasetup doctor --fresh` (the training interpreter is asked anew) and `lorasetup doctor`
  (its last answers come from the warm cache, since nothing they depend on changed);
- cold / warm preflight: `pytest validation -m preflight` with LORASETUP_FRESH=1 and without;
- shallow / static: the doctor without deps.deep, and without any probe-tagged check;
- first failure: seconds until `✗ dataset.schema` is on stderr for a dataset TOML with a typo'd key.
Prints the medians, the ratios against their targets, and the stack probe's own stage timings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.target import load_target
from lorasetup.sd import stackprobe

ROOT = Path(__file__).resolve().parents[1]
BARE = "import torch, accelerate, transformers, diffusers"


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # doctor exits 1 when a check fails; that is still a full run
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def first_failure(cmd: list[str], marker: str) -> float:
    """Seconds from the start of `cmd` until a stderr line containing `marker` arrives (read as it is written)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    assert proc.stderr is not None
    seen = None
    for line in proc.stderr:
        if seen is None and marker in line:
            seen = time.perf_counter() - start
    proc.wait()
    if seen is None:
        raise SystemExit(f"{marker!r} never appeared in the output of {' '.join(cmd)}")
    return seen


def commands(args: argparse.Namespace, typo: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each measured command and the environment variables it runs with."""
    flags = ["--kohya-root", args.kohya_root, "--python", args.python, "--device", args.device]
    if args.dataset_config:
        flags += ["--dataset-config", args.dataset_config]
    doctor = [sys.executable, "-m", "lorasetup.cli", "doctor", *flags]
    probed = sorted(c.id for c in all_checks() if "probe" in c.tags)
    gates = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "validation"), "-m",
             "preflight", *flags]
    fresh = {"LORASETUP_FRESH": "1"}
    return {"cold doctor": ([*doctor, "--fresh"], {}), "warm doctor": (doctor, {}),
            "cold preflight": (gates, fresh), "warm preflight": (gates, {}),
            "shallow": ([*doctor, "--skip", "deps.deep", "--fresh"], {}),
            "static": ([*doctor, "--skip", *probed], {})}


def typo_config(folder: Path, source: str | None) -> Path:
    """A dataset TOML with the commonest static fault: a typo'd key (`num_repeat`)."""
    image_dir = "img"
    if source:
        found = [line for line in Path(source).read_text().splitlines() if "image_dir" in line]
        image_dir = found[0].split("=", 1)[1].strip().strip("'\"") if found else image_dir
    path = folder / "typo.toml"
    path.write_text(f"[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = '{image_dir}'\n"
                    "num_repeat = 10\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kohya-root", required=True)
    parser.add_argument("--python", required=True, help="the training interpreter")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset-config")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    target = load_target({"kohya_root": args.kohya_root, "python": args.python, "device": args.device})
    entry = Path(target.script).stem
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(args, target, entry, typo_config(Path(tmp), args.dataset_config))
    report(args, target, entry, runs)


def measure(args: argparse.Namespace, target: Any, entry: str, typo: Path) -> dict[str, list[float]]:
    cmds = commands(args, typo)
    runs: dict[str, list[float]] = {name: [] for name in ["bare", "script", *cmds, "first failure"]}
    timed([args.python, "-c", BARE])  # warm the file cache once; not counted
    timed(cmds["warm doctor"][0])  # and the warm doctor's cache
    failing = [sys.executable, "-m", "lorasetup.cli", "doctor", "--kohya-root", args.kohya_root, "--python",
               args.python, "--device", args.device, "--dataset-config", str(typo), "--fresh"]
    for _ in range(args.repeat):
        runs["bare"].append(timed([args.python, "-c", BARE]))
        runs["script"].append(timed([args.python, "-c", f"import {entry}"], cwd=target.sd_scripts))
        for name, (cmd, env) in cmds.items():
            runs[name].append(timed(cmd, env=env))
        runs["first failure"].append(first_failure(failing, "✗ dataset.schema"))
    return runs


def report(args: argparse.Namespace, target: Any, entry: str, runs: dict[str, list[float]]) -> None:
    med = {name: statistics.median(values) for name, values in runs.items()}
    print(f"training interpreter: {args.python}; device {args.device}; {args.repeat} rounds, medians")
    for name, value in med.items():
        print(f"  {name:<15} {value:6.2f} s")
    print(f"  (bare = python -c '{BARE}'; script = python -c 'import {entry}' in {target.sd_scripts})")
    print(f"  warm / cold doctor    = {med['warm doctor'] / med['cold doctor']:.2f}x (target <= 0.25x)")
    print(f"  warm / cold preflight = {med['warm preflight'] / med['cold preflight']:.2f}x (target <= 0.35x)")
    print(f"  cold doctor / script  = {med['cold doctor'] / med['script']:.2f}x (target <= 0.8x)")
    print(f"  first failure on screen after {med['first failure']:.2f} s (target <= 0.5 s)")
    print("  all runs: " + json.dumps({k: [round(v, 2) for v in vs] for k, vs in runs.items()}))
    with Context(target) as ctx:
        answer = stackprobe.facts(ctx)
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in answer.timings.items())
    print(f"  stack probe stages (one more run): {stages}; {len(answer.imports)} modules and "
          f"{len(answer.from_imports)} names imported")


if __name__ == "__main__":
    main()
