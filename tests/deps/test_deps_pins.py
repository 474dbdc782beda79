"""deps.versions judges the pins that matter to THIS run (issue 18), on a kohya_ss-shaped git checkout with its
real requirement-file structure, real venvs and real pip from a local wheelhouse (offline)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lorasetup.checks import all_checks
from lorasetup.checks.deps.requirements import kohya_platform_file
from lorasetup.cli import main
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import bootstrap
from lorasetup.engine.result import Status
from lorasetup.engine.runner import select
from lorasetup.engine.target import Target, load_target
from tests.support.deps_fixtures import (
    KOHYA_RUN_PINS,
    STATIC,
    copy_venv,
    installed,
    library_points_at,
    make_kohya_checkout,
    pip_install,
    run,
    run_deps,
    this_machine,
)

pytestmark = pytest.mark.skipif(
    kohya_platform_file(this_machine())[0] != "requirements_linux.txt",
    reason="the expectations are for the machines where kohya_ss's setup installs requirements_linux.txt "
           "(Linux without ROCm); the choice itself is tested for every platform in test_deps_scan.py")

FILES = "requirements.txt, requirements_linux.txt"
RUN_PINS = "py-cpuinfo, accelerate, imagesize, rich, toml"
OTHERS = "altair, easygui, gradio, wandb, tensorboard, tensorflow"
GROUPED = (f"kohya_ss's requirements also pin 6 package(s) this run does not import, missing or off their pins: "
           f"{OTHERS}; `lorasetup bootstrap --fix --all-pins` installs them")
# the pins of modules nothing here imports; installed only with --all-pins
GUI_PINS = {"altair": "4.2.2", "easygui": "0.98.3", "gradio": "6.17.3", "wandb": "0.18.0", "tensorboard": "2.15.2",
            "tensorflow": "2.15.0.post1"}


@pytest.fixture(scope="module")
def kohya(work: Path) -> Path:
    return make_kohya_checkout(work / "kohya-pins")


def run_venv(pip_template: Path, wheels: Path, kohya: Path, dest: Path) -> Path:
    """A venv with exactly what the run imports, at kohya_ss's pins, and sd-scripts' `library` (installed here,
    not copied: a copied venv's console scripts name the old one, which deps.isolation rightly fails)."""
    python = copy_venv(pip_template, dest)
    pip_install(python, wheels, *[p.replace("py-cpuinfo", "py-cpuinfo==9.0.0") for p in KOHYA_RUN_PINS])
    library_points_at(python, kohya / "sd-scripts")
    return python


@pytest.fixture(scope="module")
def ready(work: Path, pip_template: Path, wheels: Path, kohya: Path) -> Path:
    """The run's venv for the tests that change nothing."""
    return run_venv(pip_template, wheels, kohya, work / "kohya-ready")


@pytest.fixture
def venv(pip_template: Path, wheels: Path, kohya: Path, tmp_path: Path, activated: Callable[[Path], None]) -> Path:
    """The run's venv for a test that changes it, activated."""
    python = run_venv(pip_template, wheels, kohya, tmp_path / "venv")
    activated(python)
    return python


def pip_args(wheels: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)]


def fix_run(chosen: Target, wheels: Path, all_pins: bool = False) -> tuple[dict, dict]:
    """`lorasetup bootstrap --fix [--all-pins]` through the engine: (final results, outcomes) by check id."""
    checks = all_checks()
    results, outcomes = bootstrap(lambda: Context(chosen, pip_args=pip_args(wheels), all_pins=all_pins), checks,
                                  select(checks, only=STATIC), apply=True, yes=False)
    return {r.check_id: r for r in results}, {o.check_id: o for o in outcomes}


def test_a_venv_with_only_what_the_run_imports_does_not_fail(kohya, ready, wheels, activated):
    activated(ready)
    venv = ready
    results = run_deps(kohya, venv, device="cpu")
    assert [i for i in STATIC if results[i].status is Status.FAIL] == [], \
        {i: (results[i].summary, results[i].details) for i in STATIC}
    assert results["deps.imports"].details[0] == "required: accelerate, cpuinfo, imagesize, rich, toml"
    versions = results["deps.versions"]
    assert versions.status is Status.WARN
    assert versions.summary == GROUPED
    assert "--all-pins" in versions.hint and versions.fix is None
    assert versions.details[:6] == [
        "not imported by this run; sd-scripts imports them elsewhere (other scripts, other options): "
        "wandb missing (sdxl_train.py:6), tensorboard missing "
        "(--log_with tensorboard, through accelerate's TensorBoardTracker)",
        "imported by no sd-scripts script by name (the GUI's, captioning's and tooling's packages, or an optimizer "
        "module you name in --optimizer_type): altair missing, easygui missing, gradio missing, tensorflow missing",
        # build-specific pins for CUDA: compared by release only, never a failure on this CPU run
        "not compared: torch: not installed; requirements_linux.txt:4 wants torch==2.7.0+cu128: a CUDA build, for "
        "another device (this machine: cpu); not a failure here",
        "not compared: torchvision: not installed; requirements_linux.txt:5 wants torchvision==0.22.0+cu128: a CUDA "
        "build, for another device (this machine: cpu); not a failure here",
        # no local label, but a pin of a wheel built against torch in a file on the cu128 index
        "not compared: xformers: not installed; requirements_linux.txt:6 wants xformers>=0.0.30: a CUDA build, for "
        "another device (this machine: cpu); not a failure here",
        # py-cpuinfo is `import cpuinfo`: told by its RECORD alone (the wheel has no top_level.txt)
        f"pins of the modules this run imports: {RUN_PINS}"]
    assert versions.details[6].startswith("platform file requirements_linux.txt: kohya_ss's setup.sh on Linux ")
    # and `bootstrap --fix` has nothing to install for this run
    before = installed(venv)
    _, outcomes = fix_run(Target(kohya_root=kohya, python=venv, device="cpu"), wheels)
    assert outcomes == {} and installed(venv) == before


def test_imagesize_missing_is_one_failure_and_a_one_package_fix(kohya, venv, wheels):
    run([venv, "-m", "pip", "uninstall", "-q", "-y", "imagesize"])
    before = installed(venv)
    results = run_deps(kohya, venv, pip_args=pip_args(wheels), device="cpu")
    assert results["deps.imports"].summary == "1 module(s) the run imports are missing: imagesize"
    versions = results["deps.versions"]
    assert versions.status is Status.FAIL
    assert versions.summary == f"1 of 5 pinned packages this run imports ({FILES}) not met: imagesize missing"
    assert versions.details[:2] == ["imagesize: not installed; requirements.txt:7 wants imagesize==1.4.1", GROUPED]
    assert versions.fix.commands == [f"{venv} -m pip install --no-index --find-links {wheels} imagesize==1.4.1"]
    assert versions.fix.description == "install 1 package(s) at the checkout's pins: imagesize"
    assert results["deps.imports"].fix is versions.fix  # one plan, one pip run

    final, outcomes = fix_run(Target(kohya_root=kohya, python=venv, device="cpu"), wheels)
    assert {i: o.state for i, o in outcomes.items()} == {"deps.imports": "fixed", "deps.versions": "fixed"}
    assert installed(venv) == {**before, "imagesize": "1.4.1"}  # that one package and nothing else
    assert final["deps.versions"].status is Status.WARN and final["deps.versions"].summary == GROUPED


def accepting(tmp_path: Path, kohya: Path, python: Path, accept: str) -> Target:
    """The Target a lorasetup.toml with `[deps] accept` gives (the real config loader)."""
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    (folder / "lorasetup.toml").write_text(textwrap.dedent(f"""\
        kohya_root = "{kohya}"
        python = "{python}"
        device = "cpu"

        [deps]
        accept = ["{accept}"]
        """))
    return load_target(cwd=folder, environ={})


def test_an_accepted_deviation_is_a_note_and_no_fix_undoes_it(kohya, venv, wheels, tmp_path):
    pip_install(venv, wheels, "accelerate==1.11.0")  # fp16 on MPS wants accelerate >= 1.11; kohya_ss pins 1.6.0
    plain = run_deps(kohya, venv, device="cpu")["deps.versions"]
    assert plain.status is Status.FAIL
    assert plain.summary == (f"1 of 5 pinned packages this run imports ({FILES}) not met: "
                             "accelerate 1.11.0 (wants ==1.6.0)")
    assert "accelerate==1.6.0" in plain.fix.commands[0]  # without the acceptance, the fix would downgrade it

    chosen = accepting(tmp_path, kohya, venv, "accelerate>=1.11")
    versions = run_deps(chosen)["deps.versions"]
    assert versions.status is Status.WARN and versions.summary == GROUPED
    assert (f"accepted: accelerate: 1.11.0 installed; requirements.txt:3 wants accelerate==1.6.0; accepted by "
            f"{tmp_path / 'project' / 'lorasetup.toml'}: accelerate>=1.11") in versions.details

    # with the package missing, the fix installs the accepted spec, not the pin
    run([venv, "-m", "pip", "uninstall", "-q", "-y", "accelerate"])
    missing = run_deps(chosen, pip_args=pip_args(wheels))["deps.versions"]
    assert missing.summary == f"1 of 5 pinned packages this run imports ({FILES}) not met: accelerate missing"
    assert missing.fix.commands[0].endswith("install --no-index --find-links " + str(wheels) + " 'accelerate>=1.11'")
    assert "accelerate>=1.11 (your [deps] accept, instead of the checkout's pin)" in missing.fix.description


def test_all_pins_installs_the_rest_but_never_torch_nor_an_accepted_deviation(kohya, venv, wheels, tmp_path):
    pip_install(venv, wheels, "accelerate==1.11.0")
    chosen = accepting(tmp_path, kohya, venv, "accelerate>=1.11")
    before = installed(venv)
    assert run_deps(chosen, all_pins=True)["deps.versions"].summary == (
        f"6 of 14 requirements of {FILES} not met: altair missing, easygui missing, gradio missing, wandb missing, "
        "tensorboard missing, tensorflow missing")

    final, outcomes = fix_run(chosen, wheels, all_pins=True)
    assert outcomes["deps.versions"].state == "fixed", outcomes
    assert outcomes["deps.versions"].commands == [
        f"{venv} -m pip install --no-index --find-links {wheels} altair==4.2.2 easygui==0.98.3 gradio==6.17.3 "
        "tensorboard==2.15.2 tensorflow==2.15.0.post1 wandb==0.18.0"]
    assert installed(venv) == {**before, **GUI_PINS}  # accelerate stays 1.11.0; no torch, torchvision, xformers
    assert final["deps.versions"].status is Status.OK
    assert final["deps.versions"].summary == (f"all 14 requirements of {FILES} met (4 by an accepted deviation or "
                                              "another device's build, see details)")


def test_bootstrap_all_pins_flag_shows_the_whole_plan(kohya, ready, capsys):
    code = main(["bootstrap", "--all-pins", "--kohya-root", str(kohya), "--python", str(ready), "--device", "cpu",
                 "--only", "deps.versions"])
    err = capsys.readouterr().err
    assert code == 1
    assert "[planned] deps.versions: install 6 package(s) at the checkout's pins: altair, easygui, gradio, " \
           "tensorboard, tensorflow, wandb" in err
    command = next(line for line in err.splitlines() if line.startswith("      $ "))
    assert "altair==4.2.2" in command and "torch" not in command and "xformers" not in command

    code = main(["bootstrap", "--kohya-root", str(kohya), "--python", str(ready), "--device", "cpu",
                 "--only", "deps.versions"])
    assert code == 0 and "nothing to fix automatically" in capsys.readouterr().err
