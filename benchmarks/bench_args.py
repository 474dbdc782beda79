"""Time the args gate on a real checkout: cold (no argspec cache) and cached, against `python <script> --help`.

    python benchmarks/bench_args.py --kohya-root ~/bed/sd-scripts --python ~/bed/venv/bin/python \
        [--script train_network.py] [--repeat 5]

Each round, one after the other (so each sees the same machine load):
- extract: read the script's argparse options from source (AST), no cache;
- cached:  the same through the cache under a temporary XDG_CACHE_HOME (commit + file stats checked);
- gate cold / gate cached: args.known + args.rules + args.output on a seed-like training TOML, in a fresh
  Context, with the cache emptied first / kept;
- help:    `<python> <script> --help` in the training venv, what one would run to list the options.
Prints the medians and the ratios help/extract and help/gate-cached, and the option counts of both.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from lorasetup.checks import by_id
from lorasetup.engine.context import Context
from lorasetup.engine.runner import run_one
from lorasetup.engine.target import Target
from lorasetup.sd.argspec import extract, load_argspec

SEED_TOML = """
[model]
pretrained_model_name_or_path = "model.safetensors"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
[training]
output_dir = "{out}"
mixed_precision = "fp16"
resolution = "512,512"
learning_rate = 1e-4
max_train_steps = 920
save_every_n_steps = 230
save_precision = "fp16"
"""


def gate(root: Path, script: str, config: Path) -> float:
    ctx = Context(Target(kohya_root=root, script=script, train_config=config))
    start = time.perf_counter()
    for check_id in ("args.known", "args.rules", "args.output"):
        run_one(ctx, by_id()[check_id])
    elapsed = time.perf_counter() - start
    ctx.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kohya-root", required=True, help="an sd-scripts checkout")
    parser.add_argument("--python", required=True, help="the training interpreter, for --help")
    parser.add_argument("--script", default="train_network.py")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(args.kohya_root).expanduser()
    work = Path(tempfile.mkdtemp(prefix="bench-args-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    config = work / "config.toml"
    config.write_text(SEED_TOML.format(out=work / "out"))
    runs: dict[str, list[float]] = {"extract": [], "cached": [], "gate cold": [], "gate cached": [], "help": []}
    help_count = 0
    try:
        for _ in range(args.repeat):
            start = time.perf_counter()
            spec = extract(root, args.script)
            runs["extract"].append(time.perf_counter() - start)
            load_argspec(root, args.script)
            start = time.perf_counter()
            assert load_argspec(root, args.script).from_cache
            runs["cached"].append(time.perf_counter() - start)
            shutil.rmtree(work / "cache", ignore_errors=True)
            runs["gate cold"].append(gate(root, args.script, config))
            runs["gate cached"].append(gate(root, args.script, config))
            start = time.perf_counter()
            proc = subprocess.run([args.python, args.script, "--help"], cwd=root, capture_output=True,
                                  text=True, check=False, env={**os.environ, "COLUMNS": "200"})
            runs["help"].append(time.perf_counter() - start)
            help_count = len(re.findall(r"^  -", proc.stdout, re.MULTILINE))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in runs.items()}
    for name, value in med.items():
        print(f"{name:12s} {value * 1000:9.1f} ms   (median of {args.repeat})")
    print(f"help/extract      {med['help'] / med['extract']:8.0f}x")
    print(f"help/gate cached  {med['help'] / med['gate cached']:8.0f}x")
    print(f"gate cold/cached  {med['gate cold'] / med['gate cached']:8.1f}x")
    print(f"options: {len(spec)} extracted, {help_count} in --help (incl. -h)")


if __name__ == "__main__":
    main()
