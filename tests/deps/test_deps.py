"""The deps gate against real venvs, real pip and a local wheelhouse (offline), through the real runner
and fixer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorasetup.checks import all_checks
from lorasetup.checks.deps.requirements import checkout_files
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import bootstrap
from lorasetup.engine.result import FixError, Status
from lorasetup.engine.runner import select
from lorasetup.engine.target import Target
from tests.support.checks import run_checks
from tests.support.deps_fixtures import (
    NINE,
    NINE_PINS,
    copy_venv,
    installed,
    library_points_at,
    make_tree,
    make_venv,
    pip_install,
    run_deps,
    site_packages,
    target,
    this_machine,
)

STATIC = ["deps.interpreter", "deps.imports", "deps.versions", "deps.library", "deps.isolation"]
THIS_PLATFORM_EXCLUDED = f'winonly==1.0; sys_platform != "{sys.platform}"'


@pytest.fixture(scope="module")
def stocked(work: Path, pip_template: Path, wheels: Path) -> Path:
    """toml, rich, accelerate, the B4 pair, and imagesize BELOW sd-scripts' pin; no `library`."""
    python = copy_venv(pip_template, work / "stocked")
    pip_install(python, wheels, "toml==0.10.2", "rich==14.1.0", "imagesize==1.3.0", "accelerate==1.6.0",
                "huggingface-hub==0.34.3", "diffusers==0.20.0")
    return python


def fresh(pip_template: Path, wheels: Path, dest: Path, *specs: str) -> Path:
    python = copy_venv(pip_template, dest)
    if specs:
        pip_install(python, wheels, *specs)
    return python


def test_all_present_every_static_check_passes(tmp_path, pip_template, wheels, activated):
    python = fresh(pip_template, wheels, tmp_path / "venv", "toml==0.10.2", "rich==14.1.0", "imagesize==1.4.1",
                   "accelerate==1.6.0")
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize", "from rich.console import Console"],
                     ["imagesize==1.4.1", "rich==14.1.0  # logging", "toml==0.10.2", THIS_PLATFORM_EXCLUDED,
                      "--extra-index-url https://example.invalid/simple"])
    library_points_at(python, tree)
    activated(python)
    results = run_deps(tree, python)
    assert {i: results[i].status for i in STATIC} == {i: Status.OK for i in STATIC}, \
        {i: (results[i].summary, results[i].details) for i in STATIC}
    assert "all 3 requirements of requirements.txt met" in results["deps.versions"].summary
    # the marker excludes winonly here; it is not installed and not reported as missing
    assert any("not for this machine" in d and "winonly" in d for d in results["deps.versions"].details)
    assert "required: imagesize, rich, toml" in results["deps.imports"].details[0]


def test_one_missing_is_named_with_its_place_and_pin(tmp_path, stocked):
    tree = make_tree(tmp_path / "sd-scripts", ["import sentencepiece"], ["toml==0.10.2", "sentencepiece==0.2.1"])
    result = run_deps(tree, stocked)["deps.imports"]
    assert result.status is Status.FAIL
    assert result.summary == "1 module(s) the run imports are missing: sentencepiece"
    assert result.details[0] == ("sentencepiece: imported at library/train_util.py:2 -> sentencepiece==0.2.1 "
                                 "(requirements.txt:2)")
    assert "No module named 'sentencepiece'" in result.hint
    assert result.fix is not None and "sentencepiece==0.2.1" in result.fix.commands[0]


def test_nine_missing_in_one_result_and_one_pip_command(tmp_path, bare):
    tree = make_tree(tmp_path / "sd-scripts", [f"import {m}" for m in NINE], ["toml==0.10.2", *NINE_PINS])
    results = run_deps(tree, bare)
    imports = results["deps.imports"]
    assert imports.status is Status.FAIL
    assert imports.summary.startswith("10 module(s) the run imports are missing: ")
    for module in [*NINE, "toml"]:
        assert module in imports.summary
    # the optional import (try/except ImportError) is not required, only noted
    assert "pillow_avif" not in imports.summary
    assert any(d.startswith("optional, not installed: pillow_avif") for d in imports.details)
    assert len(imports.fix.commands) == 2  # the packages, and sd-scripts' own package
    packages, editable = imports.fix.commands
    assert packages.endswith(" ".join(sorted([*NINE_PINS, "toml==0.10.2"])))
    assert editable.endswith(f"install --no-deps -e {tree}")
    # every deps check that fails carries the same single plan
    assert results["deps.versions"].fix is imports.fix is results["deps.library"].fix


def test_version_below_its_pin(tmp_path, stocked):
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize"],
                     ["toml==0.10.2", "imagesize==1.4.1", "altair==4.2.2  # nothing imports it"])
    results = run_deps(tree, stocked)
    assert results["deps.imports"].status is Status.OK
    versions = results["deps.versions"]
    assert versions.status is Status.FAIL
    assert versions.summary == ("1 of 2 pinned packages this run imports (requirements.txt) not met: "
                                "imagesize 1.3.0 (wants ==1.4.1)")
    assert versions.details[:2] == [
        "imagesize: 1.3.0 installed; requirements.txt:2 wants imagesize==1.4.1",
        "sd-scripts' requirements also pin 1 package(s) this run does not import, missing or off their pins: "
        "altair; `lorasetup bootstrap --fix --all-pins` installs them"]
    assert versions.fix.commands[0].endswith(" install imagesize==1.4.1")  # not altair: the run does not need it


def test_prodigy_optimizer_requires_prodigyopt(tmp_path, stocked):
    tree = make_tree(tmp_path / "sd-scripts", [], ["toml==0.10.2"])
    assert run_deps(tree, stocked)["deps.imports"].status is Status.OK  # a deferred import inside get_optimizer
    result = run_deps(tree, stocked, args=["--optimizer_type=Prodigy"])["deps.imports"]
    assert result.status is Status.FAIL
    assert result.details[0] == "prodigyopt: imported at --optimizer_type = Prodigy -> no requirement file pins it"
    assert "prodigyopt" in result.hint and "does not guess" in result.hint
    assert result.fix is not None and "prodigyopt" not in " ".join(result.fix.commands)


def test_library_missing_then_pointing_elsewhere(tmp_path, stocked, pip_template, wheels):
    tree = make_tree(tmp_path / "sd-scripts", [], ["toml==0.10.2"])
    missing = run_deps(tree, stocked)["deps.library"]
    assert missing.status is Status.FAIL
    assert missing.summary == "No module named 'library'"
    assert missing.fix.commands == [f"{stocked} -m pip install --no-deps -e {tree}"]

    other = make_tree(tmp_path / "old-sd-scripts", [], ["toml==0.10.2"])
    python = fresh(pip_template, wheels, tmp_path / "venv", "toml==0.10.2")
    library_points_at(python, other)
    elsewhere = run_deps(tree, python)["deps.library"]
    assert elsewhere.status is Status.FAIL
    assert elsewhere.summary == (f"`library` resolves to {other / 'library'}, not this checkout's "
                                 f"{tree / 'library'} (another checkout?)")


def test_fix_installs_pins_from_the_wheelhouse_and_the_recheck_passes(tmp_path, pip_template, wheels, activated):
    python = fresh(pip_template, wheels, tmp_path / "venv", "accelerate==1.6.0", "imagesize==1.3.0")
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize", "import rich"],
                     ["imagesize==1.4.1", "rich==14.1.0", "toml==0.10.2"])
    activated(python)
    log = tmp_path / "pip.log"
    pip_args = ["--no-index", "--find-links", str(wheels), "--log", str(log)]
    checks = all_checks()
    results, outcomes = bootstrap(lambda: Context(target(tree, python), pip_args=pip_args), checks,
                                  select(checks, only=STATIC), apply=True, yes=False)
    states = {o.check_id: o.state for o in outcomes}
    assert states == {"deps.imports": "fixed", "deps.versions": "fixed", "deps.library": "fixed"}, outcomes
    assert all(r.status is Status.OK for r in results if r.check_id in STATIC), \
        [(r.check_id, r.summary) for r in results]
    have = installed(python)
    assert (have["imagesize"], have["rich"], have["toml"], have["library"]) == ("1.4.1", "14.1.0", "0.10.2", "0.0.0")
    text = log.read_text()
    assert text.count("Successfully installed") == 2  # one pip run for the packages, one for `-e`
    assert outcomes[0].commands[0] == (f"{python} -m pip install --no-index --find-links {wheels} "
                                       f"--log {log} imagesize==1.4.1 rich==14.1.0 toml==0.10.2")


def test_fix_refuses_a_module_nothing_pins_but_uses_the_table(tmp_path, bare):
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize", "import mysterymod", "import cv2"],
                     ["imagesize==1.4.1"])
    result = run_deps(tree, bare)["deps.imports"]
    assert "mysterymod" in result.summary
    packages = result.fix.commands[0]
    assert packages.endswith("install imagesize==1.4.1 opencv-python")
    assert "mysterymod" not in " ".join(result.fix.commands)
    assert "no requirement file pins mysterymod, toml and lorasetup does not guess package names" in result.hint
    assert "opencv-python (not pinned by the checkout" in result.fix.description


def test_torch_is_never_installed_by_the_fix(tmp_path, bare):
    tree = make_tree(tmp_path / "sd-scripts", ["import torch", "import imagesize"],
                     ["torch==2.13.0", "imagesize==1.4.1", "toml==0.10.2"])
    result = run_deps(tree, bare)["deps.imports"]
    assert result.status is Status.FAIL and result.fix is None
    assert "install torch first" in result.hint
    assert f"{bare} -m pip install torch==2.13.0" in result.hint


def test_failing_pip_is_reported_and_nothing_changes(tmp_path, pip_template, wheels):
    python = fresh(pip_template, wheels, tmp_path / "venv", "toml==0.10.2")
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize"], ["imagesize==1.4.1", "toml==0.10.2"])
    library_points_at(python, tree)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    before = sorted(p.name for p in site_packages(python).iterdir())
    checks = all_checks()
    _, outcomes = bootstrap(
        lambda: Context(target(tree, python), pip_args=["--no-index", "--find-links", str(empty)]), checks,
        select(checks, only=STATIC), apply=True, yes=False)
    failed = {o.check_id: o for o in outcomes}
    assert {o.state for o in outcomes} == {"fix failed"}
    message = failed["deps.imports"].message
    assert "pip failed (exit 1)" in message
    assert "ERROR: Could not find a version that satisfies the requirement imagesize==1.4.1" in message
    assert "Nothing was rolled back" in message
    assert failed["deps.versions"].message == message  # the one plan ran once and both report it
    assert sorted(p.name for p in site_packages(python).iterdir()) == before


def test_deep_import_reports_the_real_error_lines(tmp_path, stocked):
    tree = make_tree(tmp_path / "sd-scripts", ["import diffusers", "from huggingface_hub import HfApi",
                                               "from toml import dumps"], [])
    results = run_deps(tree, stocked, only=("deps.deep",))
    assert results["deps.imports"].status is Status.OK
    deep = results["deps.deep"]
    assert deep.status is Status.FAIL, deep.summary
    assert deep.details[0].startswith("import diffusers (library/train_util.py:2): ImportError: cannot import "
                                      "name 'cached_download' from 'huggingface_hub'")
    assert deep.details[1].startswith("from toml import dumps (library/train_util.py:4): ImportError: cannot "
                                      "import name 'dumps' from 'toml'")
    assert len(deep.details) == 2  # HfApi imports fine


def test_isolation_flags_a_launcher_of_another_venv_and_system_packages(tmp_path, stocked, bare):
    tree = make_tree(tmp_path / "sd-scripts", [], [])
    copied = copy_venv(stocked.parent.parent, tmp_path / "moved-venv")  # console scripts still name the old one
    result = run_deps(tree, copied)["deps.isolation"]
    assert result.status is Status.FAIL
    assert f"{copied.parent / 'accelerate'} starts {stocked}, not this venv's Python" in result.details

    system = make_venv(tmp_path / "leaky", with_pip=False)
    cfg = system.parent.parent / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("include-system-site-packages = false",
                                           "include-system-site-packages = true"))
    base_pip = [d for d in installed(system) if d == "pip"]
    if not base_pip:
        pytest.skip("the base interpreter has no pip to leak into the venv")
    leak = make_tree(tmp_path / "leak-tree", ["import pip"], [])
    result = run_deps(leak, system)["deps.isolation"]
    assert result.status is Status.FAIL
    assert any(d.startswith("pip from ") and "(the system Python at " in d for d in result.details)


def test_interpreter_gone_home_or_unsupported_version(tmp_path, bare):
    tree = make_tree(tmp_path / "sd-scripts", [], [])
    nowhere = tmp_path / "venv" / "bin" / "python"
    result = run_deps(tree, nowhere, only=("deps.interpreter",))["deps.interpreter"]
    assert result.status is Status.FAIL and result.summary == f"the training interpreter {nowhere} does not exist"

    moved = copy_venv(bare.parent.parent, tmp_path / "old-venv")
    cfg = moved.parent.parent / "pyvenv.cfg"
    cfg.write_text("home = /nonexistent/python3.10/bin\ninclude-system-site-packages = false\n")
    result = run_deps(tree, moved, only=("deps.interpreter",))["deps.interpreter"]
    assert result.status is Status.FAIL
    assert result.summary == (f"the venv at {cfg.parent} was built on /nonexistent/python3.10/bin, "
                              "which no longer exists")

    (tree / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.99"\n')
    result = run_deps(tree, bare, only=("deps.interpreter",))["deps.interpreter"]
    assert result.status is Status.FAIL
    assert result.summary.startswith(f"Python {sys.version_info.major}.{sys.version_info.minor}.")
    assert result.summary.endswith("is outside the range this checkout supports (>=3.99)")


def test_kohya_layout_reads_requirements_and_the_platform_file(make_kohya, bare):
    root = make_kohya("populated")  # a real kohya_ss clone with its sd-scripts submodule
    (root / "requirements.txt").write_text("imagesize==1.4.1\n-e ./sd-scripts\n")
    for name in ("requirements_linux.txt", "requirements_linux_rocm.txt", "requirements_macos_arm64.txt",
                 "requirements_macos_amd64.txt", "requirements_pytorch_windows.txt"):
        (root / name).write_text("--extra-index-url https://download.pytorch.org/whl/cu128\n"
                                 "toml==0.10.2\n-r requirements.txt\n")
    platform_file = checkout_files(root, "kohya_ss", this_machine())[0][-1]
    result = run_deps(root, bare)["deps.versions"]
    # the fixture's sd-scripts imports neither: one grouped warning, no failure
    assert result.status is Status.WARN, result.summary
    assert result.summary == ("kohya_ss's requirements also pin 2 package(s) this run does not import, missing or "
                              "off their pins: imagesize, toml; `lorasetup bootstrap --fix --all-pins` installs them")
    assert result.details[0].startswith("imported by no sd-scripts script by name (the GUI's")
    assert result.details[0].endswith(": imagesize missing, toml missing")
    assert result.details[1] == "pins of the modules this run imports: none"
    assert result.details[2].startswith(f"platform file {platform_file.name}: kohya_ss's ")
    # sd-scripts' own requirements.txt (`packaging`) is not kohya_ss's: not read
    assert "packaging" not in result.summary


def test_fix_in_a_venv_without_pip_says_how_to_get_pip(tmp_path, bare):
    tree = make_tree(tmp_path / "sd-scripts", ["import imagesize"], ["imagesize==1.4.1", "toml==0.10.2"])
    fix = run_deps(tree, bare)["deps.imports"].fix
    with pytest.raises(FixError) as failed:
        fix.apply()
    assert "No module named pip" in str(failed.value)
    assert f"this venv has no pip: `{bare} -m ensurepip --upgrade`" in str(failed.value)


def test_no_pip_fix_into_lorasetups_own_interpreter(tmp_path, bare):
    """Without a training venv the checks fall back to lorasetup's interpreter: never pip into that one."""
    tree = make_tree(tmp_path / "sd-scripts", ["import sentencepiece"], ["toml==0.10.2", "sentencepiece==0.2.1"])
    results = run_checks(Target(kohya_root=tree, python=bare, sources={"python": "current interpreter"}),
                         ["deps.imports"])
    imports = results["deps.imports"]
    assert imports.status is Status.FAIL and imports.fix is None
    assert "will not pip install into it" in imports.hint and "--python" in imports.hint
