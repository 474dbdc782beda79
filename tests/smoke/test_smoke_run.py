"""run_streaming on the fixture trainer started directly (no accelerate hop): each way a run goes wrong is
stopped promptly, for the right reason, and leaves no process behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lorasetup.sd.run.command import run_env
from lorasetup.sd.run.stream import RunOutcome, run_streaming
from lorasetup.sd.run.watch import TRACEBACK_SETTLE_S
from tests.support.smoke import FIXTURE, alive


def run(mode: str, dataset: Path, tmp_path: Path, timeout: float = 60, step_s: float = 0.2) -> tuple[RunOutcome, dict]:
    record = tmp_path / "args.json"
    env = {**run_env(), "FIXTURE_TRAINER_MODE": mode, "FIXTURE_TRAINER_STEP_S": str(step_s),
           "FIXTURE_TRAINER_ARGS": str(record)}
    argv = [sys.executable, str(FIXTURE), "--dataset_config", str(dataset), "--max_train_steps", "5",
            "--output_dir", str(tmp_path / "out"), "--output_name", "t", "--network_dim", "4"]
    outcome = run_streaming(argv, timeout=timeout, echo=None, env=env)
    return outcome, json.loads(record.read_text()) if record.is_file() else {}


def test_nan_from_step_2_is_stopped_at_step_2(dataset, tmp_path):
    outcome, record = run("nan", dataset, tmp_path, step_s=1.0)
    assert outcome.stopped == "nonfinite" and outcome.watch.nonfinite == (2, "nan")
    assert outcome.watch.steps_done == 2
    assert outcome.wall_s - outcome.watch.timing()["load_s"] < 4.0  # 5 steps would take 5 s
    assert not alive(record["pid"])
    assert not (tmp_path / "out" / "t.safetensors").exists()


def test_traceback_then_hang_is_stopped_right_after_the_traceback(dataset, tmp_path):
    outcome, record = run("traceback-hang", dataset, tmp_path, timeout=60)
    assert outcome.stopped == "traceback"
    assert outcome.watch.real_error().startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert outcome.wall_s - outcome.watch.timing()["load_s"] < 1.0 + TRACEBACK_SETTLE_S + 2.0
    assert not alive(record["pid"])


def test_hang_is_killed_at_the_timeout(dataset, tmp_path):
    outcome, record = run("hang", dataset, tmp_path, timeout=10)  # room for a slow torch import on a busy machine
    assert outcome.stopped == "timeout" and outcome.watch.steps_done == 1
    assert 10 <= outcome.wall_s < 12
    assert not alive(record["pid"])


def test_no_data_found_with_exit_0_is_stopped(dataset, tmp_path):
    outcome, _ = run("nodata", dataset, tmp_path)
    assert outcome.stopped == "no-data" and outcome.watch.real_error().startswith("No data found.")
