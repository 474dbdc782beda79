"""The `lorasetup` command in a real subprocess: JSON shape, exit codes 0/1/2, bootstrap --fix/--dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RESULT_KEYS = {"id", "title", "status", "summary", "details", "hint", "fix", "duration_s", "data"}


def lorasetup(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorasetup.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "NO_COLOR": "1", **(env or {})}, timeout=120)


def test_doctor_json_ok_exit_0(make_kohya):
    root = make_kohya("populated")
    proc = lorasetup("doctor", "--kohya-root", str(root), "--only", "repo", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout holds only JSON
    assert doc["schema_version"] == 1
    assert doc["target"]["kohya_root"] == str(root) and doc["target"]["layout"] == "kohya_ss"
    assert [r["id"] for r in doc["results"]] == ["repo.root", "repo.git", "repo.submodule", "repo.present"]
    for r in doc["results"]:
        assert set(r) == RESULT_KEYS and r["status"] == "ok" and isinstance(r["duration_s"], float)
    assert doc["summary"] == {"ok": 4, "warn": 0, "fail": 0, "skip": 0, "error": 0}
    assert "✓ repo.submodule" in proc.stderr and "\033[" not in proc.stderr


def test_doctor_empty_submodule_exit_1_then_bootstrap_fix(make_kohya):
    root = make_kohya("never-initialised")
    proc = lorasetup("doctor", "--kohya-root", str(root), "--only", "repo", "--json")
    assert proc.returncode == 1
    by_id = {r["id"]: r for r in json.loads(proc.stdout)["results"]}
    assert by_id["repo.submodule"]["status"] == "fail"
    assert by_id["repo.submodule"]["fix"]["safe"] is True
    assert "submodule update --init --recursive" in by_id["repo.submodule"]["fix"]["commands"][0]
    assert by_id["repo.present"]["summary"] == "blocked by repo.submodule (fail)"

    dry = lorasetup("bootstrap", "--kohya-root", str(root), "--fix", "--dry-run")
    assert "dry run: nothing changed" in dry.stderr and "[planned] repo.submodule" in dry.stderr
    assert not any((root / "sd-scripts").iterdir())

    fixed = lorasetup("bootstrap", "--kohya-root", str(root), "--fix", "--json")
    doc = json.loads(fixed.stdout)
    assert [(f["id"], f["outcome"]) for f in doc["fixes"] if f["id"].startswith("repo.")] == \
        [("repo.submodule", "fixed")]
    after = lorasetup("doctor", "--kohya-root", str(root), "--only", "repo")
    assert after.returncode == 0, after.stderr


def test_usage_and_config_errors_exit_2(tmp_path):
    assert lorasetup("doctor", "--no-such-flag").returncode == 2
    bad_only = lorasetup("doctor", "--only", "repo.submodul", cwd=tmp_path)
    assert bad_only.returncode == 2 and "unknown check id(s): repo.submodul" in bad_only.stderr
    (tmp_path / "lorasetup.toml").write_text('kohya_rot = "/x"\n')
    typo = lorasetup("doctor", cwd=tmp_path)
    assert typo.returncode == 2
    assert "unknown key `kohya_rot`. Did you mean `kohya_root`?" in typo.stderr
    assert "Traceback" not in typo.stderr
    (tmp_path / "lorasetup.toml").write_text('device = "tpu"\n')
    bad_device = lorasetup("doctor", cwd=tmp_path)
    assert bad_device.returncode == 2 and "must be one of auto, mps, cuda, xpu, cpu" in bad_device.stderr


def test_strict_turns_warnings_into_failures(make_kohya):
    root = make_kohya("other-commit")
    assert lorasetup("doctor", "--kohya-root", str(root), "--only", "repo").returncode == 0
    assert lorasetup("doctor", "--kohya-root", str(root), "--only", "repo", "--strict").returncode == 1


def test_list_checks_names_every_gate():
    out = lorasetup("list-checks").stdout
    assert "repo.submodule" in out and "(needs repo.git)" in out


def test_list_checks_fixes_and_the_readme_say_the_same():
    """Each check that repairs something says what in `list-checks --fixes`, and the README's gate table names it
    in its gate's row."""
    from lorasetup.checks import all_checks
    out = lorasetup("list-checks", "--fixes").stdout
    rows = {line.split("|")[1].strip(" `"): line for line in
            (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines() if line.startswith("| `")}
    for c in all_checks():
        assert f"fix: {c.fixes or 'none: the hint says what to do'}" in out
        if c.fixes:
            assert f"`{c.id}`" in rows[c.gate], c.id


def test_a_skip_hint_is_printed_once(tmp_path):
    from lorasetup.engine.report import render_result
    from lorasetup.engine.result import Result
    shown: set[str] = set()
    first = Result.skip("no dataset configured", hint="pass --dataset-config")
    assert "hint: pass --dataset-config" in render_result(first, shown_hints=shown)
    assert "hint:" not in render_result(first, shown_hints=shown)
    failing = Result.fail("broken", hint="pass --dataset-config")
    assert "hint: pass --dataset-config" in render_result(failing, shown_hints=shown)


def test_skip_and_only_on_doctor_and_bootstrap(make_kohya):
    root = make_kohya("never-initialised")
    skipped = lorasetup("doctor", "--kohya-root", str(root), "--only", "repo", "--skip", "repo.git", "--json")
    ids = {r["id"]: r["status"] for r in json.loads(skipped.stdout)["results"]}
    assert "repo.git" not in ids and ids["repo.submodule"] == "fail"  # a skipped check does not block
    plan = lorasetup("bootstrap", "--kohya-root", str(root), "--only", "repo.present", "--json")
    doc = json.loads(plan.stdout)
    assert [f["id"] for f in doc["fixes"]] == ["repo.submodule"]  # requirements run, and offer their fixes
    assert {r["id"] for r in doc["results"]} == {"repo.root", "repo.git", "repo.submodule", "repo.present"}
