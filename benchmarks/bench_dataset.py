"""Time the dataset gate (all five dataset.* checks) on a generated 10,000-image dataset, side by side with
opening every image with PIL.Image.open, and print the ratio. Target: the gate under 1 s.

    python benchmarks/bench_dataset.py [--images 10000] [--kohya-root ~/bed/sd-scripts] [--repeat 3]

The dataset (PNG and JPEG images with .txt captions, one reg folder, a dataset TOML with bucketing and batch
size 4, so every image header is read) is generated once into the temp folder and reused. Each lorasetup run
uses a fresh Context, so nothing is memoized between runs; the OS file cache is warm for both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.runner import Runner
from lorasetup.engine.target import Target

SIZES = [(512, 512), (512, 768), (768, 512), (640, 480), (1024, 1024)]


def generate(root: Path, count: int) -> Path:
    """`count` images: 90 % training images in two folders, 10 % reg images; returns the dataset TOML."""
    marker = root / f"done-{count}"
    config = root / "dataset.toml"
    if marker.exists():
        return config
    reg = count // 10
    folders = {"train_a": (count - reg) // 2, "train_b": count - reg - (count - reg) // 2, "reg": reg}
    tiles = {}
    for size in SIZES:
        tiles[size] = Image.new("RGB", size, (40, 90, 160))
    for folder, n in folders.items():
        path = root / folder
        path.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = SIZES[i % len(SIZES)]
            if i % 2:
                tiles[size].save(path / f"img_{i:05d}.png", compress_level=1)
            else:
                tiles[size].save(path / f"img_{i:05d}.jpg", quality=70)
            if folder != "reg":
                (path / f"img_{i:05d}.txt").write_text(f"tok, picture {i}\n")
    config.write_text(
        '[general]\ncaption_extension = ".txt"\nshuffle_caption = true\nkeep_tokens = 1\nenable_bucket = true\n\n'
        "[[datasets]]\nresolution = 512\nbatch_size = 4\n\n"
        f'  [[datasets.subsets]]\n  image_dir = "{root / "train_a"}"\n  num_repeats = 2\n\n'
        f'  [[datasets.subsets]]\n  image_dir = "{root / "train_b"}"\n  num_repeats = 3\n\n'
        f'  [[datasets.subsets]]\n  image_dir = "{root / "reg"}"\n  is_reg = true\n')
    marker.write_text("")
    return config


def run_gate(config: Path, kohya_root: Path | None) -> tuple[tuple[float, float], dict[str, float], dict]:
    ctx = Context(Target(kohya_root=kohya_root, dataset_config=config, train_args=["--max_train_epochs", "2"]))
    checks = [c for c in all_checks() if c.gate == "dataset"]
    start, cpu = time.perf_counter(), time.process_time()
    try:
        results = Runner(ctx, checks).run(checks)
    finally:
        ctx.close()
    total = (time.perf_counter() - start, time.process_time() - cpu)
    bad = [r for r in results if r.status.value not in ("ok", "warn")]
    if bad:
        raise SystemExit(f"unexpected results: {[(r.check_id, r.summary) for r in bad]}")
    steps = next(r for r in results if r.check_id == "dataset.steps").data
    return total, {r.check_id: r.duration_s for r in results}, steps


def pil_open_all(paths: list[Path]) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        with Image.open(path) as img:
            img.size  # noqa: B018 - Image.open reads the header; .size is what a dataset loader asks first
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--kohya-root", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "lorasetup-bench-dataset")
    args = parser.parse_args()
    t0 = time.perf_counter()
    config = generate(args.dir / str(args.images), args.images)
    paths = sorted(p for p in config.parent.rglob("*") if p.suffix in (".png", ".jpg"))
    print(f"dataset: {len(paths)} images under {config.parent} (ready in {time.perf_counter() - t0:.1f} s)")
    pil_open_all(paths)  # warm the OS file cache for both sides
    gate, pil = [], []
    for _ in range(args.repeat):
        total, per_check, steps = run_gate(config, args.kohya_root)
        gate.append(total)
        pil.append(pil_open_all(paths))
    print("lorasetup dataset.* per check (last run): "
          + ", ".join(f"{k.split('.')[1]} {v:.3f} s" for k, v in per_check.items()))
    print(f"steps: {steps['steps_per_epoch']} per epoch, {steps['total_steps']} total "
          f"(batches {steps['batches_per_epoch']}, samples {steps['samples_per_epoch']})")
    for label, index in (("wall", 0), ("CPU", 1)):
        g = statistics.median(run[index] for run in gate)
        p = statistics.median(run[index] for run in pil)
        print(f"{label:4} lorasetup dataset.* (5 checks): median {g:.3f} s "
              f"(runs {', '.join(f'{run[index]:.3f}' for run in gate)}); PIL.Image.open on each image: median "
              f"{p:.3f} s (runs {', '.join(f'{run[index]:.3f}' for run in pil)}); ratio {g / p:.2f}x")
    wall = statistics.median(run[0] for run in gate)
    print(f"target under 1 s (wall): {'met' if wall < 1.0 else 'MISSED'}; load average now "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs (CPU time is the fairer "
          "figure on a busy machine)")


if __name__ == "__main__":
    main()
