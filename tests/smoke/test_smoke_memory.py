"""The smoke run's memory proof: real processes measured from outside (lorasetup.sd.run.memwatch), the largest
bucket's own dataset config, and the smoke result setting measured beside estimated. nvidia-smi cannot exist
here: where it is needed, a STAND-IN script prints its per-process answer in nvidia-smi's format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image

from lorasetup.checks.smoke.checks import run_smoke
from lorasetup.engine.context import Context
from lorasetup.engine.target import Target, tomllib
from lorasetup.sd.dataset.largest import largest_bucket, largest_bucket_config
from lorasetup.sd.run.command import run_env
from lorasetup.sd.run.memwatch import MemorySampler, process_gpu_memory
from lorasetup.sd.run.stream import run_streaming
from tests.support.checkpoints import sparse_checkpoint

MIB = 1024 ** 2
# A parent that starts a child holding 300 MiB of touched memory for 2 s (the tree's biggest process).
TREE = """
import subprocess, sys
code = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); b = bytearray(300 * 2**20); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(2)")
subprocess.run([sys.executable, "-c", code, sys.argv[1]], check=True)
"""


def stand_in_smi(tmp_path: Path, pid_file: Path, used_mib: int) -> Path:
    """An executable printing nvidia-smi's `--query-compute-apps=pid,used_memory` answer: the child's pid
    (read from `pid_file`) with `used_mib`, and an unrelated process."""
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s, {used_mib}\\n' \"$(cat {pid_file} 2>/dev/null || echo 0)\"\n"
                      "printf '1, 9999\\n'\n")
    script.chmod(0o755)
    return script


def test_the_sampler_sees_the_whole_tree_the_kernel_high_water_mark_agrees_and_a_stand_in_nvidia_smi_is_read(tmp_path):
    pid_file = tmp_path / "pid"
    sampler = MemorySampler(device="cuda", smi=str(stand_in_smi(tmp_path, pid_file, 1536)))
    outcome = run_streaming([sys.executable, "-c", TREE, str(pid_file)], timeout=60, echo=None, env=run_env(),
                            monitors=(), sampler=sampler)
    assert outcome.returncode == 0
    assert sampler.peaks.host_bytes and sampler.peaks.host_bytes >= 300 * MIB, sampler.peaks
    assert outcome.peak_rss_bytes and outcome.peak_rss_bytes >= 300 * MIB  # the child's, via wait4
    assert sampler.peaks.device_bytes == 1536 * MIB  # the child's row only; pid 1 is not in the tree
    assert sampler.peaks.device_source == "nvidia-smi"


def test_process_gpu_memory_counts_only_the_given_pids_and_survives_a_failing_stand_in_nvidia_smi(tmp_path):
    pid_file = tmp_path / "pid"
    pid_file.write_text(str(os.getpid()))
    smi = stand_in_smi(tmp_path, pid_file, 700)
    assert process_gpu_memory(str(smi), {os.getpid()}) == 700 * MIB
    assert process_gpu_memory(str(smi), {12345678}) == 0
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    broken.chmod(0o755)
    assert process_gpu_memory(str(broken), {os.getpid()}) is None
    assert process_gpu_memory(str(tmp_path / "missing"), {os.getpid()}) is None


def bucketed_dataset(root: Path, reg_only_square: bool = False) -> Path:
    """Three 96x96 images (the largest bucket at resolution 96) and two 64x128 ones (a 64x128 bucket)."""
    train, reg = root / "train", root / "reg"
    train.mkdir(parents=True)
    reg.mkdir()
    square_dir = reg if reg_only_square else train
    for i in range(3):
        Image.new("RGB", (96, 96), (i * 50, 80, 80)).save(square_dir / f"sq{i}.png")
        (square_dir / f"sq{i}.txt").write_text(f"square {i}")
    for i in range(2):
        Image.new("RGB", (64, 128), (80, i * 50, 80)).save(train / f"tall{i}.png")
        (train / f"tall{i}.txt").write_text(f"tall {i}")
    config = root / "dataset.toml"
    config.write_text(f"""[general]
caption_extension = ".txt"
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 256
bucket_reso_steps = 32

[[datasets]]
resolution = 96
batch_size = 2

  [[datasets.subsets]]
  image_dir = "{train}"
  num_repeats = 3

  [[datasets.subsets]]
  image_dir = "{reg}"
  is_reg = true
  num_repeats = 1
""")
    return config


def test_the_largest_bucket_gets_a_dataset_config_of_its_own_images(tmp_path):
    config = bucketed_dataset(tmp_path / "data")
    with Context(Target(dataset_config=config, python=Path(sys.executable))) as ctx:
        bucket = largest_bucket(ctx)
        assert bucket is not None and bucket.resolution == (96, 96) and bucket.batch_size == 2
        assert len(bucket.buckets) == 2
        path, line = largest_bucket_config(ctx, bucket, tmp_path / "out")
    assert path is not None and "every step runs at the largest bucket (2 x 96x96)" in line
    written = tomllib.loads(path.read_text())
    assert written["general"]["enable_bucket"] is True and written["datasets"][0]["batch_size"] == 2
    (subset,) = written["datasets"][0]["subsets"]
    assert subset["num_repeats"] == 3
    linked = sorted(p.name for p in Path(subset["image_dir"]).iterdir())
    assert linked == ["sq0.png", "sq0.txt", "sq1.png", "sq1.txt", "sq2.png", "sq2.txt"]


def test_when_only_reg_images_are_in_the_largest_bucket_they_train_there(tmp_path):
    config = bucketed_dataset(tmp_path / "data", reg_only_square=True)
    with Context(Target(dataset_config=config, python=Path(sys.executable))) as ctx:
        bucket = largest_bucket(ctx)
        path, _ = largest_bucket_config(ctx, bucket, tmp_path / "out")
    (subset,) = tomllib.loads(path.read_text())["datasets"][0]["subsets"]
    assert subset["is_reg"] is False and len(list(Path(subset["image_dir"]).glob("*.png"))) == 3


def test_a_dataset_of_one_bucket_needs_no_config_of_its_own(tmp_path, dataset):
    with Context(Target(dataset_config=dataset, python=Path(sys.executable))) as ctx:
        bucket = largest_bucket(ctx)
        path, line = largest_bucket_config(ctx, bucket, tmp_path / "out")
    assert path is None and "the dataset has no other" in line


def test_smoke_trains_at_the_largest_bucket_and_reports_memory_beside_the_estimate(setup, tmp_path):
    target, record, _ = setup
    target.dataset_config = bucketed_dataset(tmp_path / "data")
    with Context(target) as ctx:
        result = run_smoke(ctx, echo=None, keep=True)
    memory = result.data["memory"]
    assert result.status.value == "ok", (result.summary, result.details)
    used = memory["largest_bucket"]["dataset_config"]
    assert used and Path(used).is_file()
    assert f"--dataset_config={used}" in result.data["command"]
    assert record.read_text().count(used) == 1  # the trainer got that config
    assert memory["measured_trainer_peak_bytes"] > 50 * MIB and memory["measured_tree_peak_bytes"] > 50 * MIB
    assert memory["estimated_peak_bytes"] is None  # the fixture tree has no base model to estimate
    assert result.details[0].startswith("every step runs at the largest bucket (2 x 96x96)")
    assert result.details[1].startswith("peak memory: ") and any("no estimate" in d for d in result.details)


def test_smoke_sets_measured_beside_the_estimate_of_a_sparse_sd15_checkpoint(setup, tmp_path):
    """The same run with a base model whose header is a real SD1.5 one (weights are holes: the fixture trainer
    never loads them): the result carries the estimate beside the measured peaks, in bytes."""
    target, _, _ = setup
    target.dataset_config = bucketed_dataset(tmp_path / "data")
    target.base_model = sparse_checkpoint(tmp_path / "sd15.safetensors", "sd15")
    target.device = "cpu"
    with Context(target) as ctx:
        result = run_smoke(ctx, echo=None)
    memory = result.data["memory"]
    assert result.status.value == "ok", (result.summary, result.details)
    assert memory["estimated_device"] == "cpu" and memory["estimated_peak_bytes"] > 4 * 1024 ** 3
    assert memory["estimated_load_bytes"] > 0 and memory["measured_trainer_peak_bytes"] > 50 * MIB
    line = result.details[1]
    assert "trainer " in line and "(kernel high-water mark)" in line and "estimated " in line, line
