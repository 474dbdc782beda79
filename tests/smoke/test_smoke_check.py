"""The smoke gate end to end: real `accelerate launch` of the fixture trainer as the entry script of an
sd-scripts-shaped tree, real torch training, the verdict on each way a run goes wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorasetup.checks.smoke.checks import run_smoke
from lorasetup.commands import smoke_command
from lorasetup.engine.context import Context
from lorasetup.engine.result import Status
from lorasetup.engine.target import Target
from tests.support.smoke import alive

ROOT = Path(__file__).resolve().parents[2]
def smoke(target: Target, **kw):
    with Context(target) as ctx:
        return run_smoke(ctx, echo=None, **kw)


def test_good_run_passes_with_only_the_smoke_overrides(setup, capsys):
    target, record, person_out = setup
    with Context(target) as ctx:
        code = smoke_command(ctx, keep=False, as_json=True)
    out = capsys.readouterr()
    assert code == 0, out.err
    data = next(r["data"] for r in json.loads(out.out)["results"] if r["id"] == "smoke.run")
    assert data["steps_done"] == 5 and len(data["losses"]) == 5 and data["stopped"] is None
    assert data["total_steps"] == 18 and data["total_steps_from"] == "dataset.steps"  # 3 images x 2 repeats x 3
    assert data["eta_s"] == pytest.approx(18 * data["s_per_step"] + data["load_s"], abs=0.2)
    assert data["temp_dir"] is None and data["peak_rss_mb"] > 50
    got = json.loads(record.read_text())
    assert got["max_train_steps"] == 5 and got["max_train_epochs"] is None
    assert got["save_every_n_steps"] is None and got["sample_every_n_steps"] is None
    assert got["network_dim"] == 4 and got["network_alpha"] == 2.0 and got["learning_rate"] == 1e-3
    assert got["output_name"] == "lorasetup-smoke" and not Path(got["output_dir"]).exists()  # temp removed
    assert not person_out.exists()
    assert "✓ smoke.run" in out.err and "steps:" in out.err  # the run's own progress was echoed


def test_diverging_learning_rate_fails_at_step_2_without_waiting_for_step_5(setup, monkeypatch):
    target, record, _ = setup
    monkeypatch.setenv("FIXTURE_TRAINER_STEP_S", "1.0")
    target.train_args = ["--learning_rate=1e30"]
    result = smoke(target)
    assert result.status is Status.FAIL and "at step 2 of 5" in result.summary, result
    assert "learning_rate = 1e30 at --learning_rate" in result.hint
    assert result.data["steps_done"] == 2 and result.data["wall_s"] - result.data["load_s"] < 4.0
    assert not alive(json.loads(record.read_text())["pid"])


def test_crash_shows_the_real_error_line_and_its_hint(setup, monkeypatch):
    target, _, _ = setup
    monkeypatch.setenv("FIXTURE_TRAINER_MODE", "traceback")
    result = smoke(target)
    assert result.status is Status.FAIL
    assert "crashed at step 1 of 5: torch.OutOfMemoryError: CUDA out of memory" in result.summary, result
    assert result.hint.startswith("[G2]") and result.data["failure_mode"] == "G2"
    assert "CalledProcessError" not in result.summary


@pytest.mark.parametrize("mode, words", [("nonfinite-save", "tensors hold NaN/inf"),
                                         ("wrong-rank", "rank other than network_dim = 4")])
def test_exit_0_with_a_broken_lora_fails(setup, monkeypatch, mode, words):
    target, _, _ = setup
    monkeypatch.setenv("FIXTURE_TRAINER_MODE", mode)
    result = smoke(target, keep=True)
    assert result.status is Status.FAIL and words in result.summary, result
    kept = Path(result.data["temp_dir"])
    assert (kept / "output" / "lorasetup-smoke.safetensors").is_file()  # --keep leaves it for inspection
    shutil.rmtree(kept)


def test_no_data_found_with_exit_0_fails(setup, monkeypatch):
    target, _, _ = setup
    monkeypatch.setenv("FIXTURE_TRAINER_MODE", "nodata")
    result = smoke(target)
    assert result.status is Status.FAIL and "No data found" in result.summary and "train_data_dir" in result.hint


MARKER_PLUGIN = '''
def pytest_collection_finish(session):
    for item in session.items:
        print("TIMEOUT", item.nodeid, item.get_closest_marker("timeout").args[0])
'''


def test_pytest_gate_runs_the_smoke_check_with_the_targets_timeout(setup, tmp_path):
    target, _, _ = setup
    (tmp_path / "show_timeout.py").write_text(MARKER_PLUGIN)
    (tmp_path / "lorasetup.toml").write_text(
        f'kohya_root = "{target.kohya_root}"\npython = "{target.python}"\ndataset_config = "{target.dataset_config}"\n'
        f'train_config = "{target.train_config}"\n\n[smoke]\nsteps = 3\ntimeout = 60\n')
    report = tmp_path / "smoke.xml"
    gate = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "validation" / "test_smoke.py"), "-m", "smoke",
                           "-p", "no:cacheprovider", "-p", "show_timeout", f"--junitxml={report}", "-s"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path), "NO_COLOR": "1"}, check=False)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "test_smoke.py::test_smoke[smoke.run] 180.0" in gate.stdout  # [smoke] timeout 60 + the margin
    assert 'tests="1"' in report.read_text() and "failures=\"0\"" in report.read_text()
