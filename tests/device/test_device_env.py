"""`lorasetup env`: the paste-ready block. The MPS case uses RECORDED PROBE OUTPUT
(tests/data/probes/mps-accelerate-1.11.json); the failing-interpreter and git cases are real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lorasetup.engine.context import Context
from lorasetup.engine.target import Target
from lorasetup.envinfo import render_env
from lorasetup.sd import stackprobe

PROBES = Path(__file__).parents[1] / "data" / "probes"


def rows(text: str) -> dict[str, str]:
    return {name.strip(): value.strip() for name, _, value in (line.partition(": ") for line in text.splitlines())}


def test_env_block_from_recorded_mps_probe_output_shows_the_mps_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    answer = json.loads((PROBES / "mps-accelerate-1.11.json").read_text())
    ctx = Context(Target(python=Path(sys.executable), device="mps"))
    ctx.memo(stackprobe.KEY, lambda: answer)
    try:
        block = rows(render_env(ctx))
    finally:
        ctx.close()
    assert block["MPS"] == "built yes, available yes, recommended max memory 21.3 GiB, macOS 14 or newer yes"
    assert block["training Python"] == "3.10.14 arm64 at /Users/ana/kohya_ss/venv/bin/python; Rosetta no"
    assert block["torch"] == "2.8.0 (build with MPS)"
    assert block["accelerate"] == "1.11.0"
    assert block["accelerate config"] == f"{tmp_path / 'hf' / 'accelerate' / 'default_config.yaml'} ($HF_HOME, " \
                                         "does not exist)"
    assert block["Accelerator()"] == "device mps, mixed_precision no, distributed NO, 1 process(es)"
    assert block["sd-scripts"].startswith("could not collect")


def test_env_block_says_could_not_collect_when_the_interpreter_is_missing(tmp_path: Path):
    root = tmp_path / "sd-scripts"
    (root / "library").mkdir(parents=True)
    (root / "library" / "train_util.py").write_text("")
    (root / "train_network.py").write_text("")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    ctx = Context(Target(kohya_root=root, python=tmp_path / "venv" / "bin" / "python"))
    try:
        block = rows(render_env(ctx))
    finally:
        ctx.close()
    assert block["training Python"].startswith(f"{tmp_path / 'venv' / 'bin' / 'python'} (could not collect: ")
    assert block["torch, accelerate"] == "could not collect"
    assert block["sd-scripts"] == f"{root} @ {head} ({head[:7]})"
