"""The memory estimate and the device.memory / device.load_ram checks.

Machines this project cannot run on (CUDA 8/12/24 GB, MPS 16/32 GB, a 16 GB CPU box) come from RECORDED PROBE
ANSWERS (tests/data/probes/synthesized-*.json, derived from the other recordings; each says how). Checkpoints
are SPARSE FILES carrying a real header (tests/data/memory/*.header.json.gz: SD1.5 read from a real single-file
checkpoint, SDXL and FLUX.1-dev as sd-scripts' own classes name their tensors): the header is real, the weights
are holes, and nothing but the header is ever read. The run settings are those of kohya_ss's own presets
(bmaltais/kohya_ss 45088f04, presets/lora/*.json), turned into the sd-scripts arguments the GUI passes.
"""

from __future__ import annotations

import copy
import json
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lorasetup.engine.result import Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd import stackprobe
from lorasetup.sd.memory.estimate import GIB, Run, estimate, savings
from lorasetup.sd.memory.machine import KEY, MemoryFacts
from lorasetup.sd.memory.parts import model_parts
from lorasetup.sd.safetensors_header import TensorInfo
from tests.support.checkpoints import sparse_checkpoint, tensors
from tests.support.checks import gate_checks, run_checks

DATA = Path(__file__).parents[1] / "data"
PROBES = DATA / "probes"
DEVICE_CHECKS = gate_checks("device")
MEMORY = ("device.memory", "device.load_ram")

# kohya_ss presets (bmaltais/kohya_ss 45088f04), as sd-scripts arguments and dataset settings.
PRESETS: dict[str, dict[str, Any]] = {
    # presets/lora/sd15 - EDG_LoraOptiSettings.json: bf16, AdamW8bit, dim 64, batch 3, 512x650, no bucketing,
    # mem_eff_attn + xformers, cache_latents, no gradient checkpointing
    "sd15": {"family": "sd1", "script": "train_network.py", "header": "sd15", "images": [(512, 650)] * 4,
             "dataset": {"resolution": [512, 650], "batch_size": 3, "enable_bucket": False},
             "args": ["--network_module=networks.lora", "--network_dim=64", "--network_alpha=64",
                      "--mixed_precision=bf16", "--optimizer_type=AdamW8bit", "--mem_eff_attn", "--xformers",
                      "--cache_latents", "--clip_skip=2"]},
    # presets/lora/SDXL - LoRA adafactor v1.0.json: bf16, Adafactor, dim 128, conv_dim 4, batch 5, 1024,
    # gradient checkpointing, cache_latents(_to_disk), xformers, no_half_vae, text encoders trained
    "sdxl": {"family": "sdxl", "script": "sdxl_train_network.py", "header": "sdxl-base",
             "images": [(1024, 1024)] * 3 + [(832, 1216)] * 2,
             "dataset": {"resolution": 1024, "batch_size": 5, "enable_bucket": True, "bucket_reso_steps": 32,
                         "min_bucket_reso": 64, "max_bucket_reso": 2048},
             "args": ["--network_module=networks.lora", "--network_dim=128", "--network_alpha=128",
                      "--network_args", "conv_dim=4", "conv_alpha=4", "--mixed_precision=bf16",
                      "--optimizer_type=Adafactor", "--gradient_checkpointing", "--cache_latents",
                      "--cache_latents_to_disk", "--xformers", "--no_half_vae"]},
    # presets/lora/flux1D - adamw8bit fp8.json: bf16 + full_bf16 + fp8_base, AdamW8bit, dim 16, batch 1, 512,
    # gradient checkpointing, cached latents and text encoder outputs, sdpa
    "flux": {"family": "flux", "script": "flux_train_network.py", "header": "flux1-dev",
             "images": [(512, 512)] * 2 + [(448, 576)],
             "dataset": {"resolution": 512, "batch_size": 1, "enable_bucket": True, "bucket_no_upscale": True,
                         "min_bucket_reso": 256, "max_bucket_reso": 2048},
             "args": ["--network_module=networks.lora_flux", "--network_dim=16", "--network_alpha=16",
                      "--mixed_precision=bf16", "--full_bf16", "--fp8_base", "--optimizer_type=AdamW8bit",
                      "--gradient_checkpointing", "--cache_latents", "--cache_latents_to_disk",
                      "--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk", "--sdpa",
                      "--t5xxl_max_token_length=512"]},
}


def dataset(root: Path, sizes: list[tuple[int, int]], settings: dict[str, Any]) -> Path:
    """Captioned PNGs of the given sizes and a dataset TOML with `settings`."""
    images = root / "img"
    images.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 40 % 255, 90, 160)).save(images / f"{i:03d}.png")
        (images / f"{i:03d}.txt").write_text(f"photo {i}")
    lines = ["[general]", 'caption_extension = ".txt"', "", "[[datasets]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["", "  [[datasets.subsets]]", f"  image_dir = {json.dumps(str(images))}", "  num_repeats = 2"]
    config = root / "dataset.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def probe(name: str) -> dict[str, Any]:
    return json.loads((PROBES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {key: sparse_checkpoint(root / f"{p['header']}.safetensors", p["header"]) for key, p in PRESETS.items()}


def preset_target(preset: str, root: Path, checkpoints: dict[str, Path], device: str, *extra: str) -> Target:
    spec = PRESETS[preset]
    config = dataset(root / preset, spec["images"], spec["dataset"])
    return Target(python=Path(sys.executable), device=device, script=spec["script"], dataset_config=config,
                  base_model=checkpoints[preset], train_args=[*spec["args"], *extra])


def run_memory(target: Target, answer: dict[str, Any], memory: MemoryFacts | None = None) -> dict[str, Result]:
    """device.memory and device.load_ram (and device.torch, which they need) on a recorded probe answer and the
    recording's memory figures (what lorasetup.sd.memory.machine reads on that machine)."""
    figures = memory if memory is not None else MemoryFacts.parse(answer["_memory"])
    return run_checks(target, MEMORY, registry=DEVICE_CHECKS, answers={stackprobe.KEY: answer, KEY: figures})


# ---- component sizes from headers ------------------------------------------------------------------------

def test_component_sizes_of_real_layouts_match_the_known_model_sizes():
    sd15 = model_parts(tensors("sd15"), "sd1", 0).components
    sdxl = model_parts(tensors("sdxl-base"), "sdxl", 0).components
    flux = model_parts(tensors("flux1-dev"), "flux", 0)
    assert (sd15["unet"].params, sd15["te1"].params, sd15["vae"].params) == (859_520_964, 123_060_480, 83_653_863)
    assert sdxl["unet"].params == 2_567_463_684 and sdxl["te2"].params == 694_659_841
    assert flux.components["transformer"].params == 11_901_408_320
    assert len(flux.components["transformer"].swap_blocks) == 19 + 38
    # a rank-8 networks.lora on SD1.5 (U-Net + text encoder): sd-scripts saves 4,718,592 weights + 264 alphas
    assert 8 * (sd15["unet"].lora_io + sd15["te1"].lora_io) == 4_718_592
    assert any("--t5xxl not set" in note for note in flux.notes)


def test_a_header_without_the_expected_prefixes_is_noted_not_a_crash():
    odd = {"model.diffusion_model.x.weight": TensorInfo("model.diffusion_model.x.weight", "F16", (4, 4), 0, 32)}
    parts = model_parts(odd, "sd1", 32)
    assert parts.components["unet"].params == 16 and parts.components["te1"].params == 0
    assert any("no te1 tensors" in note for note in parts.notes)
    assert estimate(Run("sd1", parts.components, "cuda", 1, 512, 512)).peak_bytes > 0


# ---- the estimate itself ---------------------------------------------------------------------------------

def sd15_run(**kw: Any) -> Run:
    return Run("sd1", model_parts(tensors("sd15"), "sd1", 0).components, **{
        "device": "cuda", "batch": 1, "width": 512, "height": 512, "file_bytes": 2_132_625_278, **kw})


def test_each_setting_moves_the_estimate_the_way_sd_scripts_uses_memory():
    base = sd15_run(mixed_precision="fp16", attention="sdpa", network_dim=32)
    peak = estimate(base).peak_bytes
    assert estimate(replace(base, gradient_checkpointing=True)).peak_bytes < peak
    assert estimate(replace(base, batch=4)).peak_bytes > peak
    assert estimate(replace(base, width=768, height=768)).peak_bytes > peak
    assert estimate(replace(base, cache_latents=True)).peak_bytes < peak
    assert estimate(replace(base, attention="plain")).peak_bytes > peak
    assert estimate(replace(base, optimizer="AdamW8bit")).peak_bytes < peak
    assert estimate(replace(base, optimizer="Prodigy")).peak_bytes > peak
    assert estimate(replace(base, network_dim=128)).peak_bytes > peak
    assert estimate(replace(base, mixed_precision="no")).peak_bytes > peak
    assert estimate(replace(base, lowram=True)).load_host_bytes < estimate(base).load_host_bytes


def test_savings_are_positive_sorted_and_each_is_what_the_change_saves():
    run = sd15_run(batch=4, width=768, height=768, network_dim=64)
    found = savings(run)
    assert found and [s.saving_bytes for s in found] == sorted((s.saving_bytes for s in found), reverse=True)
    assert all(s.saving_bytes > 0 for s in found)
    checkpointing = next(s for s in found if s.change == "gradient_checkpointing = true")
    assert checkpointing.saving_bytes == (estimate(run).peak_bytes
                                          - estimate(replace(run, gradient_checkpointing=True)).peak_bytes)


def test_cuda_figures_agree_with_the_vram_sd_scripts_documents():
    """sd-scripts' own figures. SDXL LoRA "can be done with 8GB GPU memory (10GB recommended)" with U-Net only,
    gradient checkpointing, cached text encoder outputs and latents, an 8-bit optimizer and dim 4-8
    (docs/train_SDXL-en.md). FLUX.1 LoRA (README of sd-scripts 7bd9a6b1, "FLUX.1 LoRA training"): the sample
    command (bf16, --fp8_base, dim 4, U-Net only, AdamW8bit, checkpointing, cached outputs, --highvram,
    dataset_1024_bs2.toml) "will work with 24GB VRAM GPUs"; "16GB VRAM GPUs with the batch size of 1"; "12GB
    VRAM GPUs with --blocks_to_swap 16"; "10GB VRAM GPUs will work with 22 blocks swapped, and 8GB VRAM GPUs
    will work with 28 blocks swapped". Without --fp8_base it "requires > 26GB VRAM" (kohya-ss/misc-models,
    flux-hasui-lora README)."""
    sdxl = model_parts(tensors("sdxl-base"), "sdxl", 0).components
    sdxl_8gb = Run("sdxl", sdxl, "cuda", 1, 1024, 1024, mixed_precision="bf16", attention="sdpa", cache_latents=True,
                   cache_te=True, train_te=False, gradient_checkpointing=True, network_dim=8, optimizer="AdamW8bit")
    assert 6 * GIB < estimate(sdxl_8gb).peak_bytes < 10 * GIB
    flux = model_parts(tensors("flux1-dev"), "flux", 0).components
    sample = Run("flux", flux, "cuda", 2, 1024, 1024, mixed_precision="bf16", fp8_base=True, cache_latents=True,
                 cache_te=True, train_te=False, gradient_checkpointing=True, network_dim=4, optimizer="AdamW8bit",
                 highvram=True)
    for gpu_gb, change in ((24, {}), (16, {"batch": 1}), (12, {"batch": 1, "blocks_to_swap": 16}),
                           (10, {"batch": 1, "blocks_to_swap": 22}), (8, {"batch": 1, "blocks_to_swap": 28})):
        peak = estimate(replace(sample, **change)).peak_bytes
        assert peak < gpu_gb * GIB, (gpu_gb, change, peak / GIB)  # an "N GB" card has N GiB (16 GB: 16384 MiB)
    assert estimate(replace(sample, batch=1, fp8_base=False)).peak_bytes > 24 * GIB


def test_the_estimate_matches_the_cpu_measurements_of_real_sd_scripts_runs():
    """benchmarks/data/memory-calibration-cpu.json: peak RSS of real train_network.py runs (SD1.5, CPU)."""
    runs = json.loads((Path(__file__).parents[2] / "benchmarks" / "data" / "memory-calibration-cpu.json").read_text())
    measured = [r for r in runs["runs"] if r["returncode"] == 0 and r["trainer_peak_rss_bytes"]]
    assert len(measured) >= 16
    for row in measured:
        spec = row["row"]
        run = sd15_run(device="cpu", batch=spec["batch"], width=spec["resolution"], height=spec["resolution"],
                       network_dim=spec["dim"], gradient_checkpointing=spec["gc"], cache_latents=spec["cache_latents"],
                       attention=spec["attention"], cached_samples=4)
        error = estimate(run).peak_bytes / row["trainer_peak_rss_bytes"] - 1
        assert abs(error) <= 0.20, (row["key"], f"{100 * error:+.1f}%")


# ---- the checks on recorded machines ---------------------------------------------------------------------

# preset, recording, device, device.memory, device.load_ram (None: close to a threshold, not asserted)
EXPECTED = [
    ("sd15", "synthesized-cuda-12gb", "cuda", Status.OK, Status.OK),
    ("sd15", "synthesized-mps-16gb", "mps", Status.OK, Status.OK),
    ("sd15", "synthesized-cpu-16gb", "cpu", None, Status.OK),
    ("sdxl", "synthesized-cuda-8gb", "cuda", Status.FAIL, Status.FAIL),
    ("sdxl", "synthesized-cuda-12gb", "cuda", Status.FAIL, None),
    ("sdxl", "synthesized-cuda-24gb", "cuda", Status.OK, Status.OK),
    ("sdxl", "synthesized-mps-16gb", "mps", Status.WARN, Status.FAIL),  # past the working set, under the limit
    ("sdxl", "synthesized-mps-32gb", "mps", Status.OK, Status.WARN),
    ("sdxl", "synthesized-cpu-16gb", "cpu", Status.FAIL, Status.FAIL),
    ("flux", "synthesized-cuda-12gb", "cuda", Status.FAIL, Status.FAIL),
    ("flux", "synthesized-cuda-24gb", "cuda", Status.OK, Status.OK),
    ("flux", "synthesized-mps-32gb", "mps", Status.OK, Status.FAIL),
]


@pytest.mark.parametrize("preset, recording, device, memory, load", EXPECTED)
def test_presets_on_recorded_machines(preset, recording, device, memory, load, tmp_path, checkpoints):
    results = run_memory(preset_target(preset, tmp_path, checkpoints, device), probe(recording))
    got, loading = results["device.memory"], results["device.load_ram"]
    assert memory is None or got.status is memory, (got.summary, got.details)
    assert load is None or loading.status is load, (loading.summary, loading.details)
    data = got.data
    assert data["estimate_peak_bytes"] > 0 and data["available_bytes"] > 0
    assert all(isinstance(v, int) for k, v in data.items() if k.endswith("_bytes"))
    if got.status is Status.FAIL:
        assert "does not fit" in got.summary and got.hint and data["savings"]
        assert all(s["saving_bytes"] > 0 for s in data["savings"])


def test_a_failing_run_on_a_recorded_cuda_12gb_is_told_a_set_of_changes_that_fits(tmp_path, checkpoints):
    results = run_memory(preset_target("sdxl", tmp_path, checkpoints, "cuda"), probe("synthesized-cuda-12gb"))
    got = results["device.memory"]
    assert got.status is Status.FAIL and "CUDA out of memory" in got.summary
    assert "train_batch_size / batch_size = 1" in got.hint, got.hint
    after = float(got.hint.rsplit("estimate then ", 1)[1].split(" GiB")[0])
    assert after * GIB <= 0.85 * got.data["available_bytes"] + 0.05 * GIB
    assert any(line.startswith("saves ") for line in got.details)


def test_the_largest_bucket_is_what_the_dataset_really_produces_recorded_cuda(tmp_path, checkpoints):
    """SDXL preset: 1024x1024 and 832x1216 images; batch 5; the activations are sized at the bigger bucket."""
    got = run_memory(preset_target("sdxl", tmp_path, checkpoints, "cuda"), probe("synthesized-cuda-24gb"))
    bucket = got["device.memory"].data["bucket"]
    assert (bucket["width"], bucket["height"], bucket["batch_size"]) == (1024, 1024, 5)


def test_a_lora_file_as_base_model_skips_with_the_reason_recorded_cuda(tmp_path):
    lora = tmp_path / "lora.safetensors"
    raw = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F16", "shape": [4, 8], "data_offsets": [0, 64]}})
    lora.write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + b"\0" * 64)
    config = dataset(tmp_path / "d", [(512, 512)], {"resolution": 512, "batch_size": 1})
    target = Target(python=Path(sys.executable), device="cuda", dataset_config=config, base_model=lora,
                    train_args=["--network_module=networks.lora"])
    got = run_memory(target, probe("synthesized-cuda-12gb"))["device.memory"]
    assert got.status is Status.SKIP and "the estimate models SD1.x" in got.summary, got.summary


def test_without_memory_figures_the_checks_skip_with_the_reason_recorded_cpu(tmp_path, checkpoints):
    unknown = MemoryFacts(notes=("psutil is not installed: available RAM unknown",))
    results = run_memory(preset_target("sd15", tmp_path, checkpoints, "cpu"), probe("synthesized-cpu-16gb"), unknown)
    for check_id in MEMORY:
        assert results[check_id].status is Status.SKIP and "psutil is not installed" in results[check_id].summary


def test_recorded_cuda_without_nvidia_smi_figures_uses_torchs_total(tmp_path, checkpoints):
    answer = probe("synthesized-cuda-24gb")
    no_gpus = replace(MemoryFacts.parse(answer["_memory"]), gpus=())
    got = run_memory(preset_target("sd15", tmp_path, checkpoints, "cuda"), answer, no_gpus)["device.memory"]
    assert got.data["available_bytes"] == answer["torch"]["cuda_devices"][0]["total_memory"]
    assert any("free memory unknown without nvidia-smi" in d for d in got.details)


def test_cuda_visible_devices_picks_the_gpus_the_run_sees_recorded_two_gpus(tmp_path, checkpoints, monkeypatch):
    answer = copy.deepcopy(probe("synthesized-cuda-24gb"))
    two = MemoryFacts.parse({**answer["_memory"], "gpus": [
        {"index": 0, "name": "busy", "total": 25757220864, "free": 2 * GIB},
        {"index": 1, "name": "idle", "total": 25757220864, "free": 24 * GIB}]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    got = run_memory(preset_target("sd15", tmp_path, checkpoints, "cuda"), answer, two)["device.memory"]
    assert got.data["available_bytes"] == 24 * GIB and got.status is Status.OK


def test_no_dataset_or_an_unknown_script_skips_never_crashes_recorded_cuda(tmp_path, checkpoints):
    target = Target(python=Path(sys.executable), device="cuda", base_model=checkpoints["sd15"],
                    train_args=["--network_module=networks.lora"])
    got = run_memory(target, probe("synthesized-cuda-12gb"))["device.memory"]
    assert got.status is Status.SKIP and "dataset" in got.summary, got.summary
    other = replace(preset_target("sd15", tmp_path, checkpoints, "cuda"), script="train_db.py")
    got = run_memory(other, probe("synthesized-cuda-12gb"))["device.memory"]
    assert got.status is Status.SKIP and "train_db.py" in got.summary


def test_training_arguments_become_estimate_settings_as_sd_scripts_reads_them():
    from lorasetup.sd.memory.inputs import run_settings
    from lorasetup.sd.trainargs import load_train_args

    notes: list[str] = []
    args = load_train_args(None, ["--network_module=lycoris.kohya", "--network_args", "algo=loha", "conv_dim=8",
                                  "--network_dim=abc", "--use_8bit_adam", "--xformers", "--max_token_length=225",
                                  "--cache_text_encoder_outputs_to_disk", "--network_train_unet_only"])
    got = run_settings(args, "sdxl", notes)
    assert (got["network_factor"], got["conv_dim"], got["network_dim"]) == (2.0, 8, 4)
    assert (got["optimizer"], got["attention"], got["token_chunks"]) == ("AdamW8bit", "xformers", 3)
    assert got["cache_te"] and not got["train_te"]
    assert any("network_dim = 'abc' is not a number" in note for note in notes)


def test_a_damaged_base_model_skips_with_the_reason_recorded_cuda(tmp_path):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    config = dataset(tmp_path / "d", [(512, 512)], {"resolution": 512, "batch_size": 1})
    target = Target(python=Path(sys.executable), device="cuda", dataset_config=config, base_model=broken,
                    train_args=["--network_module=networks.lora"])
    results = run_memory(target, probe("synthesized-cuda-12gb"))
    for check_id in MEMORY:
        assert results[check_id].status is Status.SKIP and "see model.file" in results[check_id].summary
