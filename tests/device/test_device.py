"""The device gate on the CPU path, for real: this venv's torch 2.13 (CPU) and accelerate run the probes;
accelerate configs live in a temporary HF_HOME; fixes are applied through the real fixer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import bootstrap
from lorasetup.engine.result import FixError, Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd import accelconfig, stackprobe
from tests.support.checks import gate_checks, run_checks

DEVICE_CHECKS = gate_checks("device")
SINGLE_PROCESS = {"device.distributed": Status.SKIP}  # one process on one machine: nothing to rendezvous
# without a base model and dataset the memory checks have nothing to estimate (tests/device/test_memory.py)
NOTHING_TO_ESTIMATE = {"device.memory": Status.SKIP, "device.load_ram": Status.SKIP}
ALL_PASS = {**{c.id: Status.OK for c in DEVICE_CHECKS}, **SINGLE_PROCESS, **NOTHING_TO_ESTIMATE}
MULTI_GPU = ("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
             "use_cpu: false\nmixed_precision: fp16\n")


@pytest.fixture(autouse=True)
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """accelerate's default config location, in this test's own folder (the probes inherit it)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def cpu_target(**fields: object) -> Target:
    return Target(python=Path(sys.executable), device="cpu", **fields)  # type: ignore[arg-type]


def run(target: Target, *ids: str) -> dict[str, Result]:
    return run_checks(target, ids, registry=DEVICE_CHECKS)


def fix_all(target: Target, yes: bool) -> tuple[dict[str, Result], dict[str, str]]:
    """`lorasetup bootstrap --fix [--yes]` over the device gate: final results, and each fix's outcome."""
    results, outcomes = bootstrap(lambda: Context(target), DEVICE_CHECKS, DEVICE_CHECKS, apply=True, yes=yes)
    return {r.check_id: r for r in results}, {o.check_id: o.state for o in outcomes}


def write_config(hf_home: Path, text: str) -> Path:
    path = hf_home / "accelerate" / "default_config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_cpu_setup_without_accelerate_config_passes_every_device_check(hf_home: Path):
    results = run(cpu_target())
    assert {k: r.status for k, r in results.items()} == ALL_PASS, results
    acc = results["device.accelerate"]
    assert "runs on cpu" in acc.summary
    assert any(f"{hf_home / 'accelerate' / 'default_config.yaml'} ($HF_HOME) does not exist" in d
               for d in acc.details), acc.details
    assert any("Accelerator() under that launch: device cpu" in d for d in acc.details), acc.details


def test_fp16_on_cpu_fails_in_precision_without_waiting_for_the_probe():
    start = time.perf_counter()
    result = run(cpu_target(train_args=["--mixed_precision=fp16"]), "device.precision")["device.precision"]
    elapsed = time.perf_counter() - start
    assert result.status is Status.FAIL
    assert result.summary == ("mixed precision fp16 (--mixed_precision) on cpu: accelerate starts without "
                              "complaint, then the run dies at the first training step, after loading the model "
                              "(fp16 needs a GPU)")
    assert "--mixed_precision=no in the training command" in (result.hint or "")
    assert result.fix is None  # the value is on the command line: the person changes their command
    assert elapsed < 1.0, f"device.precision took {elapsed:.2f} s; it must not wait for torch to import"


def test_bf16_on_cpu_is_a_warning():
    result = run(cpu_target(train_args=["--mixed_precision", "bf16"]), "device.precision")["device.precision"]
    assert result.status is Status.WARN and "CPU autocast" in result.summary


def test_fp16_in_training_toml_is_fixed_only_with_consent(tmp_path: Path):
    toml = tmp_path / "train.toml"
    toml.write_text('[training]\nmixed_precision = "fp16"  # GUI default\nfull_fp16 = true\n')
    result = run(cpu_target(train_config=toml), "device.precision")["device.precision"]
    assert result.status is Status.FAIL and "train.toml [training] mixed_precision" in result.summary
    assert result.fix is not None and not result.fix.safe
    assert "full_fp16 = true -> false" in " ".join(result.fix.commands)
    result.fix.apply()
    assert toml.read_text() == '[training]\nmixed_precision = "no"  # GUI default\nfull_fp16 = false\n'
    backups = list(tmp_path.glob("train.toml.bak-*"))
    assert len(backups) == 1 and 'mixed_precision = "fp16"' in backups[0].read_text()
    assert run(cpu_target(train_config=toml), "device.precision")["device.precision"].status is Status.OK


def test_multi_gpu_config_with_two_processes_fails_without_a_gpu(hf_home: Path):
    path = write_config(hf_home, MULTI_GPU)
    result = run(cpu_target(), "device.accelerate")["device.accelerate"]
    assert result.status is Status.FAIL
    assert result.summary == f"{path} asks for a multi-GPU launch with 2 processes, but torch sees 0 GPU(s)"
    assert any("sd-scripts passes its own (no)" in d for d in result.details), result.details
    assert result.fix is not None and not result.fix.safe  # the file exists: rewriting it needs --yes

    path.write_text(MULTI_GPU + "debug: true\n")  # the person edits it before applying the fix
    with pytest.raises(FixError, match="changed since the check read it"):
        result.fix.apply()
    assert path.read_text() == MULTI_GPU + "debug: true\n"


def test_config_with_a_key_accelerate_does_not_know_fails_with_accelerates_message(hf_home: Path):
    write_config(hf_home, "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nuse_cpu: true\n"
                          "mixed_precison: 'no'\n")
    result = run(cpu_target(), "device.accelerate")["device.accelerate"]
    assert result.status is Status.FAIL
    assert "accelerate launch stops before training" in result.summary
    assert "unknown keys (['mixed_precison'])" in result.summary


def test_missing_config_is_written_by_the_safe_fix_and_the_recheck_passes(tmp_path: Path):
    path = tmp_path / "configs" / "accelerate.yaml"
    results, outcomes = fix_all(cpu_target(accelerate_config=path), yes=False)
    assert outcomes == {"device.accelerate": "fixed"}  # applied without --yes: the fix is safe
    assert results["device.accelerate"].status is Status.OK, results["device.accelerate"]
    assert json.loads(path.read_text()) == accelconfig.machine_config("cpu")
    assert any("use_cpu=True" in d for d in results["device.accelerate"].details)


def test_existing_config_is_untouched_without_yes_and_backed_up_with_it(hf_home: Path):
    path = write_config(hf_home, MULTI_GPU)
    results, outcomes = fix_all(cpu_target(), yes=False)
    assert outcomes == {"device.accelerate": "needs --yes"}
    assert results["device.accelerate"].status is Status.FAIL
    assert path.read_text() == MULTI_GPU
    assert list(path.parent.iterdir()) == [path]

    results, outcomes = fix_all(cpu_target(), yes=True)
    assert outcomes == {"device.accelerate": "fixed"}
    assert results["device.accelerate"].status is Status.OK
    backups = list(path.parent.glob("default_config.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == MULTI_GPU
    assert json.loads(path.read_text())["distributed_type"] == "NO"


def test_8bit_optimizer_and_xformers_on_cpu_fail_and_the_fix_edits_the_toml(tmp_path: Path):
    """This venv has no bitsandbytes: the one-step probe fails with the real import error."""
    toml = tmp_path / "train.toml"
    toml.write_text('[model]\nnetwork_dim = 8\n\n[optimizer]\noptimizer_type = "AdamW8bit"\n'
                    "xformers = true\n")
    result = run(cpu_target(train_config=toml), "device.features")["device.features"]
    assert result.status is Status.FAIL and result.summary == "2 training args do not fit cpu"
    assert any("AdamW8bit (train.toml [optimizer] optimizer_type) needs bitsandbytes" in d
               and "No module named 'bitsandbytes'" in d for d in result.details), result.details
    assert any(d.startswith("--xformers (train.toml [optimizer] xformers) on cpu") for d in result.details)
    assert result.fix is not None and not result.fix.safe
    result.fix.apply()
    assert toml.read_text() == ('[model]\nnetwork_dim = 8\n\n[optimizer]\noptimizer_type = "AdamW"\n'
                                "xformers = false\nsdpa = true\n")
    assert run(cpu_target(train_config=toml), "device.features")["device.features"].status is Status.OK


def test_expected_mps_on_this_machine_fails_and_says_why():
    result = run(Target(python=Path(sys.executable), device="mps"), "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    assert result.summary.startswith("device = mps, but MPS exists only on Apple Silicon Macs; this is Linux")


def test_a_missing_interpreter_is_an_error_and_the_static_checks_say_they_need_it(tmp_path: Path):
    target = Target(python=tmp_path / "nope" / "python", device="mps", train_args=["--mixed_precision=fp16"])
    results = run(target)
    assert results["device.torch"].status is Status.ERROR
    assert "cannot be started" in results["device.torch"].summary
    assert results["device.accelerate"].status is Status.SKIP
    assert results["device.precision"].status is Status.SKIP
    assert results["device.features"].status is Status.OK  # AdamW, no xformers: nothing asks the device


def test_stack_probe_reports_import_errors_and_survives_a_crashing_import(tmp_path: Path, monkeypatch):
    """A fake sd-scripts whose entry script imports a broken module, a missing name and a submodule that
    aborts the interpreter: each gets its own line, and the device facts survive the crash."""
    mods = tmp_path / "site"
    (mods / "lst_good").mkdir(parents=True)
    (mods / "lst_good" / "__init__.py").write_text("x = 1\n")
    (mods / "lst_good" / "zcrash.py").write_text("import os\nos.abort()\n")
    (mods / "lst_broken.py").write_text("raise ImportError('libfoo.so.1: cannot open shared object file')\n")
    root = tmp_path / "sd-scripts"
    for package, module in (("library", "train_util"), ("networks", "lora")):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / f"{module}.py").write_text("import os\n")
    (root / "train_network.py").write_text("import lst_broken\nfrom lst_good import missing_name, zcrash\n"
                                           "import library.train_util\n")
    monkeypatch.setenv("PYTHONPATH", str(mods))
    ctx = Context(cpu_target(kohya_root=root))
    try:
        found = stackprobe.facts(ctx)
    finally:
        ctx.close()
    assert found.imports == {"lst_broken": "ImportError: libfoo.so.1: cannot open shared object file",
                             "lst_good": None}
    assert (found.from_imports["lst_good:missing_name"] or "").startswith(
        "ImportError: cannot import name 'missing_name' from 'lst_good'")
    assert (found.from_imports["lst_good:zcrash"] or "").startswith(
        "the interpreter crashed while running `from lst_good import zcrash`")
    assert found.crash and found.crashed_in == "lst_good:zcrash" and not found.done
    assert found.torch is not None and found.torch.version.startswith("2.")
    assert found.accelerate and found.accelerate.accelerator and found.accelerate.accelerator.device == "cpu"


def test_a_torch_that_kills_the_interpreter_on_import_fails_device_torch(tmp_path: Path, monkeypatch):
    """A torch whose import aborts (as a broken binary build does): no Python error, a clear failure."""
    (tmp_path / "site" / "torch").mkdir(parents=True)
    (tmp_path / "site" / "torch" / "__init__.py").write_text("import os\nos.abort()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    result = run(cpu_target(), "device.torch")["device.torch"]
    assert result.status is Status.FAIL
    assert result.summary == (f"torch cannot be imported in {sys.executable}: the interpreter died while "
                              "importing it, with no Python error (a segfault or abort in a compiled extension)")


LOCATIONS = [{"HF_HOME": "{tmp}/hf"}, {"HF_HOME": "~/hf-home"}, {"HF_HOME": ""},
             {"XDG_CACHE_HOME": "{tmp}/xdg"}, {"HF_HOME": "{tmp}/hf", "XDG_CACHE_HOME": "{tmp}/xdg"}, {}]
THEIRS = """
import importlib, json, os, sys
import accelerate.commands.config.config_args as config_args
out = []
for env in json.loads(sys.argv[1]):
    for key in ("HF_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(key, None)
    os.environ.update(env)
    out.append(os.path.abspath(importlib.reload(config_args).default_config_file))
print(json.dumps(out))
"""


def test_default_config_location_matches_accelerates_own(tmp_path: Path, monkeypatch):
    """accelerate computes the path when its module is imported: reloading it under each environment, in
    this venv's real accelerate, gives the truth to compare with."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    envs = [{k: v.format(tmp=tmp_path) for k, v in env.items()} for env in LOCATIONS]
    theirs = json.loads(subprocess.run([sys.executable, "-c", THEIRS, json.dumps(envs)], capture_output=True,
                                       text=True, check=True, env=dict(os.environ)).stdout)
    ours = []
    for env in envs:
        monkeypatch.delenv("HF_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        ours.append(str(accelconfig.find_config(Target()).path))
    assert ours == theirs
    assert len(set(theirs)) == 5  # HF_HOME set twice to the same folder


def test_precision_flag_pairs_are_reported_once(tmp_path, hf_home):
    """full_fp16 without fp16: device.precision says so alone, but leaves it to args.rules when both run."""
    target = cpu_target(train_args=["--full_fp16"])
    alone = run(target, "device.precision")["device.precision"]
    assert alone.status is Status.FAIL and "full_fp16 (--full_fp16) requires mixed precision fp16" in alone.summary
    both = run_checks(target, registry=[*DEVICE_CHECKS, *(c for c in all_checks() if c.id == "args.rules")])
    assert both["device.precision"].status is Status.OK
