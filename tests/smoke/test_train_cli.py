"""`lorasetup train` and `lorasetup checkpoints` as a person runs them: Ctrl-C (SIGINT) and SIGTERM stop the
whole run, print the summary and leave no process; the checkpoints of any folder in step order with verdicts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lorasetup import cli
from tests.support.loras import lora
from tests.support.smoke import alive

DRIVER = Path(__file__).parents[1] / "support" / "train_cli.py"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "SIGINT received"),
                                             (signal.SIGTERM, 143, "SIGTERM received")])
def test_a_signal_stops_the_whole_run_and_still_prints_the_summary(setup, monkeypatch, tmp_path, sig, code, said):
    target, record, person_out = setup
    monkeypatch.setenv("FIXTURE_TRAINER_STEP_S", "0.4")
    monkeypatch.setenv("FIXTURE_TRAINER_WORKER", "1")
    report = tmp_path / "run.json"
    argv = [sys.executable, str(DRIVER), "train", "--no-smoke", "--kohya-root", str(target.kohya_root),
            "--python", str(target.python), "--dataset-config", str(target.dataset_config),
            "--train-config", str(target.train_config), "--report", str(report), "--", "--save_state"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)})
    try:
        wait_for(person_out / "mychar-step00000002.safetensors", timeout=120)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    summary = err[err.index("lorasetup train: stopped at step"):]
    assert said in summary.splitlines()[0]
    assert "mychar-step00000002.safetensors" in summary and "last good checkpoint: " in summary
    assert "--resume " + str(person_out / "mychar-step00000002-state") in summary  # states were saved
    pids = json.loads(record.read_text())
    assert not alive(pids["pid"]) and not alive(pids["worker_pid"])
    data = json.loads(report.read_text())
    assert data["stop"]["reason"] == {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[sig]
    assert data["exit_status"] == code and data["checkpoints"][0]["step"] == 2


def test_checkpoints_of_a_folder_in_step_order_with_the_last_good_one(tmp_path, capsys):
    folder = tmp_path / "gui-run"
    folder.mkdir()
    for step in (30, 10, 20):
        lora(folder / f"mychar-step{step:08d}.safetensors", rank=8, alpha=4.0, step=step, nan=step == 30)
    cut = (folder / "mychar-step00000020.safetensors").read_bytes()
    (folder / "mychar-000001.safetensors").write_bytes(cut[: len(cut) // 2])  # a save cut short: no metadata
    (folder / "mychar.ckpt").write_bytes(b"\x80\x02pickle")
    os.utime(folder / "mychar.ckpt", (time.time() + 5, time.time() + 5))
    assert cli.main(["checkpoints", str(folder), "--json"]) == 1
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert [(c["step"], c["file"], c["state"]) for c in data["checkpoints"]] == [
        (10, "mychar-step00000010.safetensors", "ok"), (20, "mychar-step00000020.safetensors", "ok"),
        (30, "mychar-step00000030.safetensors", "broken"), (None, "mychar-000001.safetensors", "broken"),
        (None, "mychar.ckpt", "not verified")]
    assert data["last_good_checkpoint"] == str(folder / "mychar-step00000020.safetensors") and data["broken"] == 2
    assert data["checked_against"] == "each file's own metadata"
    assert "step 10, epoch 1, networks.lora, dim 8, alpha 4.0" in out.err
    assert f"last good checkpoint: {folder / 'mychar-step00000020.safetensors'} (step 20)" in out.err


def test_checkpoints_of_the_configured_run_are_checked_against_its_arguments(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    lora(out_dir / "mine.safetensors", rank=8, dtype=np.float16)
    code = cli.main(["checkpoints", "--output-dir", str(out_dir), "--", "--network_dim=16", "--network_alpha=1"])
    err = capsys.readouterr().err
    assert code == 1 and "checked against this run's training arguments" in err
    assert "rank other than network_dim = 16 (--network_dim)" in err
    assert cli.main(["checkpoints", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
