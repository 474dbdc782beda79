"""The pytest gates agree with `lorasetup doctor` on the same targets (real pytest, real git)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lorasetup.checks import all_checks

ROOT = Path(__file__).resolve().parents[2]
VERDICT = {"ok": "passed", "warn": "passed", "fail": "failed", "error": "failed", "skip": "skipped"}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "NO_COLOR": "1"})


def junit_verdicts(path: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(path).iter("testcase"):
        check_id = case.get("name").split("[", 1)[1].rstrip("]")
        kinds = {child.tag for child in case}
        out[check_id] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return out


@pytest.mark.parametrize("state", ["populated", "never-initialised", "zip", "other-commit"])
def test_gate_and_doctor_agree(make_kohya, tmp_path, state):
    root = make_kohya(state)
    doctor = run("-m", "lorasetup.cli", "doctor", "--kohya-root", str(root), "--only", "repo", "--json",
                 cwd=tmp_path)
    expected = {r["id"]: VERDICT[r["status"]] for r in json.loads(doctor.stdout)["results"]}
    report = tmp_path / "report.xml"
    gate = run("-m", "pytest", str(ROOT / "validation" / "test_repo.py"), "-m", "preflight", "-p",
               "no:cacheprovider", "--kohya-root", str(root), f"--junitxml={report}", cwd=tmp_path)
    assert junit_verdicts(report) == expected, gate.stdout
    assert (gate.returncode == 0) == (doctor.returncode == 0), gate.stdout


def test_failure_message_is_the_rendered_result_with_its_hint(make_kohya, tmp_path):
    root = make_kohya("never-initialised")
    gate = run("-m", "pytest", str(ROOT / "validation" / "test_repo.py"), "-p", "no:cacheprovider",
               "--kohya-root", str(root), "-rs", cwd=tmp_path)
    assert gate.returncode == 1
    assert "✗ repo.submodule" in gate.stdout and "submodule update --init --recursive" in gate.stdout
    assert "SKIPPED" in gate.stdout and "blocked by repo.submodule (fail)" in gate.stdout
    assert "Traceback" not in gate.stdout


def test_markers_are_registered_and_strict(tmp_path):
    listed = run("-m", "pytest", "--markers", "-p", "no:cacheprovider", cwd=ROOT).stdout
    for marker in ("preflight", "probe", "smoke"):
        assert f"@pytest.mark.{marker}:" in listed
    for marker in ("preflight", "smoke"):
        collected = run("-m", "pytest", str(ROOT / "validation"), "-m", marker, "--collect-only", "-q",
                        "-p", "no:cacheprovider", cwd=ROOT).stdout
        ids = {line.split("[", 1)[1].rstrip("]") for line in collected.splitlines() if "::" in line}
        assert ids == {c.id for c in all_checks() if marker in c.tags}


def test_config_error_in_the_gate_exits_cleanly(tmp_path):
    (tmp_path / "lorasetup.toml").write_text('kohya_roots = "x"\n')
    gate = run("-m", "pytest", str(ROOT / "validation" / "test_repo.py"), "-p", "no:cacheprovider", cwd=tmp_path)
    assert gate.returncode == 2
    assert "Did you mean `kohya_root`?" in gate.stdout + gate.stderr


def test_ini_keys_name_the_target(make_kohya, tmp_path):
    root = make_kohya("never-initialised")
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nlorasetup_kohya_root = {root}\n")
    gate = run("-m", "pytest", str(ROOT / "validation" / "test_repo.py"), "-p", "no:cacheprovider", "-c",
               str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), cwd=tmp_path)
    assert gate.returncode == 1 and "the sd-scripts submodule is empty (never initialised)" in gate.stdout
    flag_wins = run("-m", "pytest", str(ROOT / "validation" / "test_repo.py"), "-p", "no:cacheprovider", "-c",
                    str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "--kohya-root",
                    str(make_kohya("bare")), cwd=tmp_path)
    assert flag_wins.returncode == 0, flag_wins.stdout
