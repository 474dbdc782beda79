"""Time the deps gate on a real checkout, side by side with plain interpreter starts.

    python benchmarks/bench_deps.py --kohya-root ~/bed/sd-scripts --python ~/bed/venv/bin/python [--repeat 5]

Prints, as medians over --repeat runs, each in a fresh run context:
- one `python -c 'import imagesize'` start of the training interpreter (the baseline);
- deps.imports + deps.versions run one after the other with no prefetch (the AST scan, one find_spec probe,
  one environment probe, the requirement files): with an empty scan cache, then with the per-file scan cache
  lorasetup keeps, then with the background prefetch `doctor` uses;
- deps.deep (the shared stack probe, which also collects the device facts) against importing the same
  modules and `from X import Y` names by hand in one interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lorasetup.checks import by_id
from lorasetup.engine.context import Context
from lorasetup.engine.result import Status
from lorasetup.engine.runner import Runner, run_one
from lorasetup.engine.target import Target, load_target
from lorasetup.sd import stackprobe
from lorasetup.sd.imports import deep_targets


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interpreter_start(python: Path) -> None:
    subprocess.run([str(python), "-c", "import imagesize"], check=True)


def two_checks(target: Target, prefetch: bool, cold: bool = False) -> None:
    """deps.imports then deps.versions in a fresh context; their requirements are not timed. `cold`: with an
    empty scan cache, as on the first run after the checkout changed."""
    if cold:
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-deps-")
    checks = by_id()
    wanted = [checks["deps.imports"], checks["deps.versions"]]
    ctx = Context(target)
    try:
        if prefetch:
            Runner(ctx, list(checks.values())).start_prefetch(wanted)
        for check in wanted:
            result = run_one(ctx, check)
            if result.status is not Status.OK:
                raise SystemExit(f"{check.id} did not pass: {result.summary}")
    finally:
        ctx.close()


def by_hand_code(modules: list[str], pairs: list[tuple[str, str]]) -> str:
    lines = [f"import {m}" for m in modules] + [f"from {m} import {n}" for m, n in pairs]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kohya-root", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-deep", action="store_true", help="skip the deps.deep comparison (imports torch)")
    opts = parser.parse_args()
    target = load_target({"kohya_root": opts.kohya_root, "python": opts.python})
    python = target.python_exe
    Runner(Context(target), list(by_id().values())).run([by_id()["deps.versions"]])  # warm the file cache

    baseline = median_time(lambda: interpreter_start(python), opts.repeat)
    cache_home = os.environ.get("XDG_CACHE_HOME")
    cold = median_time(lambda: two_checks(target, prefetch=False, cold=True), opts.repeat)
    if cache_home is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = cache_home
    two_checks(target, prefetch=False)  # fill the real scan cache
    plain = median_time(lambda: two_checks(target, prefetch=False), opts.repeat)
    warm = median_time(lambda: two_checks(target, prefetch=True), opts.repeat)
    print(f"target: {target.sd_scripts} with {python} (median of {opts.repeat})")
    print(f"  python -c 'import imagesize'                       {baseline:7.3f} s   1.0x")
    print(f"  deps.imports + deps.versions, empty scan cache     {cold:7.3f} s   {cold / baseline:4.1f}x")
    print(f"  deps.imports + deps.versions                       {plain:7.3f} s   {plain / baseline:4.1f}x"
          "   (target < 0.5 s)")
    print(f"  the same with doctor's background prefetch         {warm:7.3f} s   {warm / baseline:4.1f}x")
    if opts.no_deep:
        return
    ctx = Context(target)
    modules, pairs = deep_targets(ctx)
    ctx.close()
    code = by_hand_code(modules, pairs)

    def deep() -> None:
        c = Context(target)
        try:
            answer = stackprobe.facts(c)
            if any(answer.imports.values()) or any(answer.from_imports.values()):
                raise SystemExit("deps.deep found failing imports; fix them before timing")
        finally:
            c.close()
    hand = median_time(lambda: subprocess.run([str(python), "-c", code], check=True, capture_output=True),
                       opts.repeat)
    probe = median_time(deep, opts.repeat)
    print(f"  by hand: {len(modules)} imports + {len(pairs)} from-imports, one python  {hand:7.3f} s   "
          f"{hand / baseline:5.1f}x")
    print(f"  deps.deep (shared stack probe, device facts too)   {probe:7.3f} s   {probe / baseline:5.1f}x"
          f"   ({probe / hand:.2f}x by hand)")


if __name__ == "__main__":
    sys.exit(main())
