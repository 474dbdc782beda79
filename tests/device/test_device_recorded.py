"""The device gate on machines this project cannot run on (MPS, CUDA, a CPU-only torch next to nvidia-smi),
fed RECORDED PROBE OUTPUT: tests/data/probes/*.json hold what lorasetup.sd.stackprobe answers there (see each
file's `_source`) and, under `_optimizer_step`, what the bitsandbytes one-step probe answers. The checks run
for real on those answers; only the training interpreter's answer is recorded."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd import stackprobe
from lorasetup.sd.programs.stack import SCHEMA_VERSION
from lorasetup.sd.stackfacts import StackFacts
from tests.support.checks import gate_checks, run_checks

PROBES = Path(__file__).parents[1] / "data" / "probes"
DEVICE_CHECKS = gate_checks("device")
SINGLE_PROCESS = {"device.distributed": Status.SKIP}  # one process on one machine: nothing to rendezvous
# without a base model and dataset the memory checks have nothing to estimate (tests/device/test_memory.py)
NOTHING_TO_ESTIMATE = {"device.memory": Status.SKIP, "device.load_ram": Status.SKIP}
ALL_PASS = {**{c.id: Status.OK for c in DEVICE_CHECKS}, **SINGLE_PROCESS, **NOTHING_TO_ESTIMATE}


def recorded(name: str) -> dict[str, Any]:
    return json.loads((PROBES / f"{name}.json").read_text())


def run_recorded(answer: dict[str, Any], device: str, *ids: str, **fields: Any) -> dict[str, Result]:
    """Run device checks with the stack probe's (and optimizer probe's) answer taken from a recording."""
    answers = {stackprobe.KEY: answer}
    if "_optimizer_step" in answer:
        answers["probe:device:optimizer"] = answer["_optimizer_step"]
    return run_checks(Target(python=Path(sys.executable), device=device, **fields), ids, registry=DEVICE_CHECKS,
                      answers=answers)


def mac_trap(answer: dict[str, Any]) -> dict[str, Any]:
    """The same Mac after `accelerate config default`: use_cpu true, so Accelerator() lands on the CPU."""
    trapped = copy.deepcopy(answer)
    acc = trapped["accelerate"]
    acc["config"] = {"compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "NO",
                     "mixed_precision": "no", "num_processes": 1, "use_cpu": True}
    acc["launch"].update(num_processes=1, use_cpu=True)
    acc["launch"]["env"]["ACCELERATE_USE_CPU"] = "True"
    acc["accelerator"]["device"] = "cpu"
    return trapped


def test_recorded_probe_files_have_every_key_the_real_probe_returns(tmp_path, monkeypatch):
    """The recordings must not drift from the probe: compare with a real answer from this venv."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    ctx = Context(Target(python=Path(sys.executable), device="cpu"))
    try:
        real = stackprobe.answer(ctx)
    finally:
        ctx.close()
    mac_only = {"mac_ver", "proc_translated", "arm64_hardware"}
    for path in sorted(PROBES.glob("*.json")):
        answer = json.loads(path.read_text())
        assert set(real) <= set(answer), path.name
        for part in ("python", "torch", "accelerate"):
            assert set(real[part]) - mac_only - {"errors"} <= set(answer[part]), (path.name, part)
        assert set(real["accelerate"]["launch"]) <= set(answer["accelerate"]["launch"]), path.name


def test_recorded_mps_accelerate_1_8_passes_with_mps_and_no_precision():
    results = run_recorded(recorded("mps-accelerate-1.8"), "mps")
    assert {k: r.status for k, r in results.items()} == ALL_PASS, results
    assert results["device.torch"].summary == "torch 2.6.0 (build with MPS) can use mps"
    assert any("recommended max memory 21.3 GiB" in d for d in results["device.torch"].details)
    assert results["device.accelerate"].summary == ("accelerate 1.8.1 with defaults (no config file) runs "
                                                    "on mps")


@pytest.mark.parametrize("mp, said", [("fp16", "fp16 mixed precision requires a GPU (not 'mps')."),
                                      ("bf16", "bf16 mixed precision requires PyTorch >= 1.10")])
def test_recorded_mps_accelerate_1_8_refuses_fp16_and_bf16(mp: str, said: str, tmp_path: Path):
    toml = tmp_path / "config_lora.toml"
    toml.write_text(f'mixed_precision = "{mp}"\nno_half_vae = true\n')
    result = run_recorded(recorded("mps-accelerate-1.8"), "mps", "device.precision",
                          train_config=toml)["device.precision"]
    assert result.status is Status.FAIL
    assert result.summary.startswith(f"mixed precision {mp} (config_lora.toml mixed_precision) on mps: "
                                     f'accelerate 1.8.1 refuses {mp} on MPS ("{said}')
    assert result.fix is not None and not result.fix.safe
    result.fix.apply()
    assert toml.read_text() == 'mixed_precision = "no"\nno_half_vae = true\n'


def test_recorded_mps_uses_accelerates_own_refusal_when_the_probe_saw_one():
    """A probe run with sd-scripts' fp16 records Accelerator()'s own error; that message is reported."""
    answer = recorded("mps-accelerate-1.8")
    answer["accelerate"]["accelerator_error"] = "ValueError: fp16 mixed precision requires a GPU (not 'mps')."
    result = run_recorded(answer, "mps", "device.precision",
                          train_args=["--mixed_precision", "fp16"])["device.precision"]
    assert result.status is Status.FAIL
    assert result.summary.endswith("accelerate 1.8.1 refuses it: ValueError: fp16 mixed precision requires a "
                                   "GPU (not 'mps').")


@pytest.mark.parametrize("mp", ["fp16", "bf16"])
def test_recorded_mps_accelerate_1_11_allows_fp16_and_bf16(mp: str):
    result = run_recorded(recorded("mps-accelerate-1.11"), "mps", "device.precision",
                          train_args=[f"--mixed_precision={mp}"])["device.precision"]
    assert result.status is Status.OK, result
    assert result.summary == f"mixed precision {mp} (--mixed_precision) fits mps"


def test_recorded_mps_accelerate_1_11_bf16_needs_macos_14():
    answer = recorded("mps-accelerate-1.11")
    answer["python"]["mac_ver"], answer["torch"]["mps_macos14"] = "13.6.7", False
    result = run_recorded(answer, "mps", "device.precision",
                          train_args=["--mixed_precision=bf16"])["device.precision"]
    assert result.status is Status.FAIL
    assert result.summary.endswith("bf16 on MPS needs macOS 14 or newer; this is macOS 13.6.7")


def test_recorded_mps_mac_trap_use_cpu_true_fails_with_the_explanation_and_fix_writes_mps_config(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    config = tmp_path / "accelerate" / "default_config.yaml"
    config.parent.mkdir()
    config.write_text('{"compute_environment": "LOCAL_MACHINE", "use_cpu": true, "distributed_type": "NO"}\n')
    result = run_recorded(mac_trap(recorded("mps-accelerate-1.11")), "mps",
                          "device.accelerate")["device.accelerate"]
    assert result.status is Status.FAIL
    assert result.summary == (f"use_cpu is true in {config}: training runs on the CPU although mps is "
                              "available")
    assert "`accelerate config default` writes use_cpu: true on Macs" in (result.hint or "")
    assert result.fix is not None and not result.fix.safe
    result.fix.apply()
    written = json.loads(config.read_text())
    assert (written["use_cpu"], written["distributed_type"], written["num_processes"]) == (False, "NO", 1)
    assert len(list(config.parent.glob("default_config.yaml.bak-*"))) == 1


def test_recorded_mps_8bit_optimizer_fails_with_the_bitsandbytes_error(tmp_path: Path):
    toml = tmp_path / "config_lora.toml"
    toml.write_text('[optimizer_arguments]\noptimizer_type = "AdamW8bit"\nlearning_rate = 0.0001\n')
    result = run_recorded(recorded("mps-accelerate-1.8"), "mps", "device.features",
                          train_config=toml)["device.features"]
    assert result.status is Status.FAIL
    assert result.summary == ("optimizer AdamW8bit (config_lora.toml [optimizer_arguments] optimizer_type) "
                              "needs bitsandbytes, and one step of it on mps fails (bitsandbytes 0.41.2): "
                              "AttributeError: 'NoneType' object has no attribute 'cadam32bit_grad_fp32'")
    assert result.fix is not None
    result.fix.apply()
    assert 'optimizer_type = "AdamW"\nlearning_rate = 0.0001' in toml.read_text()


def test_recorded_mps_under_rosetta_fails_with_the_reason():
    answer = recorded("mps-accelerate-1.8")
    answer["python"].update(machine="x86_64", proc_translated="1", platform="macOS-14.5-x86_64-i386-64bit")
    answer["torch"].update(mps_built=False, mps_available=False, device_ops={},
                           mps_recommended_max_memory=None)
    result = run_recorded(answer, "auto", "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    assert "x86_64 Python running under Rosetta on an Apple Silicon Mac" in result.summary
    assert "arm64" in (result.hint or "")


def test_recorded_cuda_box_passes_for_cuda_and_auto_with_fp16_and_8bit_adam():
    for device in ("cuda", "auto"):
        args = ["--mixed_precision=fp16", "--optimizer_type=AdamW8bit", "--xformers"]
        results = run_recorded(recorded("cuda"), device, train_args=args)
        assert {k: r.status for k, r in results.items()} == ALL_PASS, results
        assert results["device.torch"].summary == "torch 2.5.1+cu124 (CUDA 12.4 build) can use cuda"
        assert any("NVIDIA GeForce RTX 3060, sm_86, 11.8 GiB" in d for d in results["device.torch"].details)
        assert any("one step on cuda took 0.0123 s (bitsandbytes 0.44.0)" in d
                   for d in results["device.features"].details)


def test_recorded_cuda_box_with_a_turing_gpu_refuses_bf16():
    answer = recorded("cuda")
    answer["torch"]["cuda_devices"][0].update(name="NVIDIA GeForce RTX 2080 Ti", capability=[7, 5])
    answer["torch"]["cuda_bf16"] = False
    result = run_recorded(answer, "cuda", "device.precision", train_args=["--mixed_precision=bf16"])
    assert result["device.precision"].status is Status.FAIL
    assert "NVIDIA GeForce RTX 2080 Ti has no bf16" in result["device.precision"].summary


def test_recorded_cuda_box_warns_about_fp16_on_gtx_16xx():
    answer = recorded("cuda")
    answer["torch"]["cuda_devices"][0].update(name="NVIDIA GeForce GTX 1660 SUPER", capability=[7, 5])
    result = run_recorded(answer, "cuda", "device.precision", train_args=["--mixed_precision=fp16"])
    assert result["device.precision"].status is Status.WARN
    assert "GTX 16xx cards produce NaN" in result["device.precision"].summary


def test_recorded_cuda_box_with_a_gpu_newer_than_the_torch_build_fails():
    answer = recorded("cuda")
    answer["torch"]["cuda_devices"][0].update(name="NVIDIA GeForce RTX 5090", capability=[12, 0])
    result = run_recorded(answer, "cuda", "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    assert result.summary == ("torch 2.5.1+cu124 has no kernels for this GPU: NVIDIA GeForce RTX 5090 is "
                              "sm_120; torch 2.5.1+cu124 has kernels for sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 "
                              "sm_90")


def test_recorded_cuda_box_asked_for_mps_fails_and_says_why():
    result = run_recorded(recorded("cuda"), "mps", "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    assert result.summary.startswith("device = mps, but MPS exists only on Apple Silicon Macs")


def test_recorded_cuda_box_with_a_config_naming_a_missing_gpu_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    answer = recorded("cuda")
    answer["accelerate"]["launch"]["gpu_ids"] = "1"
    result = run_recorded(answer, "cuda", "device.accelerate")["device.accelerate"]
    assert result.status is Status.FAIL
    assert "gpu_ids 1" in result.summary and "this machine has 1" in result.summary


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_recorded_cpu_only_torch_next_to_nvidia_smi_fails_with_the_reinstall_command(device: str):
    result = run_recorded(recorded("cpu-torch-nvidia-smi"), device, "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    asked = "auto -> cuda" if device == "auto" else "cuda"
    assert result.summary == (f"device = {asked}, but torch 2.6.0+cpu is a CPU-only build; nvidia-smi lists "
                              "NVIDIA GeForce RTX 3060")
    assert ("-m pip install --force-reinstall torch==2.6.0 torchvision --index-url "
            "https://download.pytorch.org/whl/cu") in (result.hint or "")


@pytest.mark.parametrize("path", sorted(PROBES.glob("*.json")), ids=lambda p: p.stem)
def test_recorded_answers_parse_into_typed_facts(path: Path):
    found = StackFacts.parse(json.loads(path.read_text()))
    assert found.schema_version == SCHEMA_VERSION and found.done
    assert found.torch is not None and found.torch.version and found.accelerate is not None
    assert found.accelerate.launch is not None and found.accelerate.accelerator is not None
    assert found.python.sys_platform in ("darwin", "linux")


def test_an_answer_of_another_schema_is_refused_not_misread():
    answer = recorded("cuda")
    answer["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ProbeError, match=f"schema_version {SCHEMA_VERSION + 1}; this lorasetup reads"):
        StackFacts.parse(answer)
    del answer["schema_version"]
    with pytest.raises(ProbeError, match="schema_version None"):
        StackFacts.parse(answer)
