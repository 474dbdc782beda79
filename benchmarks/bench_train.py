"""What watching costs: the same training run raw and under `lorasetup train`'s watch, interleaved.

Raw: the run's command with its output to a file, nothing else. Watched: the same command through run_long, the
machinery `lorasetup train` uses (output parsed live, status lines, stall/disk/NaN guards, every checkpoint
verified as it lands, the summary). Pairs alternate who goes first. On a shared machine the wall-time ratio of a
pair is noisy; lorasetup's own CPU time during the watched run (its process, all threads) is the noise-free part
of the cost and is printed as a share of the run's wall time too. The target: watching costs at most 1%.

By default the run is the fixture trainer (tests/support/fixture_trainer.py, real torch, saving every 20 of 400
steps); with lorasetup flags after `--` it is that Target's real run, e.g. the sd-scripts bed:

    python benchmarks/bench_train.py [--repeat N] [--steps 400] [-- --kohya-root ~/sd-scripts --python ... ]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from lorasetup.cli import build_parser, make_target
from lorasetup.engine.context import Context
from lorasetup.engine.target import Target
from lorasetup.sd.run.command import run_env
from lorasetup.sd.run.console import Console
from lorasetup.sd.run.longrun import TrainOptions, run_long
from lorasetup.sd.run.plan import RunPlan, run_plan
from lorasetup.sd.run.summary import exit_status, summary_lines

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "support" / "fixture_trainer.py"


def fixture_target(root: Path, steps: int) -> Target:
    """An sd-scripts-shaped tree whose train_network.py is the fixture trainer, and a 4-image dataset."""
    from PIL import Image  # the test extra's Pillow; only the fixture mode needs it

    tree = root / "sd-scripts"
    for rel in ("library/__init__.py", "library/train_util.py", "networks/__init__.py", "networks/lora.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).touch()
    shutil.copy(FIXTURE, tree / "train_network.py")
    (root / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 120, 200 - 40 * i)).save(root / "img" / f"p{i}.png")
        (root / "img" / f"p{i}.txt").write_text(f"a photo, style {i}")
    (root / "dataset.toml").write_text(f'[general]\ncaption_extension = ".txt"\n\n[[datasets]]\nresolution = 32\n'
                                       f'batch_size = 1\n\n  [[datasets.subsets]]\n  image_dir = "{root / "img"}"\n')
    return Target(kohya_root=tree, python=Path(sys.executable), dataset_config=root / "dataset.toml",
                  output_dir=root / "out",
                  train_args=["--output_name", "bench", "--network_module", "networks.lora", "--network_dim", "8",
                              "--max_train_steps", str(steps), "--save_every_n_steps", str(max(1, steps // 20))])


def make_plan(target: Target, fixture: bool) -> RunPlan:
    with Context(target) as ctx:
        plan = run_plan(ctx)
    if not fixture:
        return plan
    script = plan.argv.index(str(target.kohya_root / "train_network.py"))  # type: ignore[operator]
    return replace(plan, argv=[sys.executable, str(target.kohya_root / "train_network.py"), *plan.argv[script + 1:]])


def fresh(plan: RunPlan) -> None:
    if plan.output_dir is not None:
        shutil.rmtree(plan.output_dir, ignore_errors=True)


def raw(plan: RunPlan, env: dict[str, str], log: Path) -> float:
    fresh(plan)
    start = time.perf_counter()
    with log.open("w") as fh:  # its own session, like the watched run's (Linux's autogroup scheduler gives a new
        # session its own CPU share: without it the comparison would measure the scheduler, not the watch)
        proc = subprocess.run(plan.argv, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                              start_new_session=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the raw run failed (exit {proc.returncode}): see {log}")
    return wall


def watched(plan: RunPlan, env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Wall time, lorasetup's own CPU time, and the exit status `lorasetup train` would give."""
    fresh(plan)
    screen = io.StringIO()
    console = Console(screen, live=False, total=plan.total_steps)
    cpu, start = time.process_time(), time.perf_counter()
    run = run_long(plan, TrainOptions(), console, env)
    lines = summary_lines(run)
    wall, own = time.perf_counter() - start, time.process_time() - cpu
    log.write_text(screen.getvalue() + "\n".join(lines) + "\n")
    return wall, own, exit_status(run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400, help="fixture mode: training steps (a save every 1/20th)")
    ap.add_argument("--step-s", default="0.05", help="fixture mode: seconds per step")
    ap.add_argument("lorasetup_args", nargs=argparse.REMAINDER, help="after --: a Target's lorasetup train flags")
    opts = ap.parse_args()
    extra = opts.lorasetup_args[1:] if opts.lorasetup_args[:1] == ["--"] else opts.lorasetup_args
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    env = run_env()
    if extra:
        own, passthrough = (extra[:extra.index("--")], extra[extra.index("--") + 1:]) if "--" in extra else (extra, [])
        target = make_target(build_parser().parse_args(["train", *own]), passthrough)
    else:
        target = fixture_target(work, opts.steps)
        env = {**env, "FIXTURE_TRAINER_STEP_S": opts.step_s}
    plan = make_plan(target, fixture=not extra)
    print(f"{'fixture trainer' if not extra else 'real run'}: {plan.total_steps} steps, saves at "
          f"{[s['step'] for s in plan.saves]}\n$ {' '.join(plan.argv)}", flush=True)
    rows = []
    for i in range(opts.repeat):
        pair: dict[str, tuple[float, float, int]] = {}
        for kind in (("raw", "watched") if i % 2 == 0 else ("watched", "raw")):  # alternate who goes first
            log = work / f"{kind}-{i}.log"
            pair[kind] = (raw(plan, env, log), 0.0, 0) if kind == "raw" else watched(plan, env, log)
        (raw_s, _, _), (watched_s, own_s, status) = pair["raw"], pair["watched"]
        rows.append((raw_s, watched_s, own_s, status))
        print(f"pair {i + 1}: raw {raw_s:7.2f} s | watched {watched_s:7.2f} s (exit {status}) | ratio "
              f"{watched_s / raw_s:.3f} | lorasetup's own CPU {own_s:.2f} s = {100 * own_s / raw_s:.2f}% of the run",
              flush=True)
    raw_total, watched_total, own_total = (sum(r[k] for r in rows) for k in range(3))
    print(f"\n{len(rows)} pairs: raw {raw_total:.1f} s, watched {watched_total:.1f} s; ratio of totals "
          f"{watched_total / raw_total:.4f}, median pair ratio {statistics.median(r[1] / r[0] for r in rows):.4f}")
    print(f"lorasetup's own CPU time while watching: {own_total:.2f} s = {100 * own_total / raw_total:.2f}% of the "
          f"raw wall time (target: at most 1%)")
    print(f"logs: {work}")
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
