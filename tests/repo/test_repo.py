"""The repo gate against real git checkouts in every state people end up in."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorasetup.checks.repo.checks import submodule_fix
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import bootstrap
from lorasetup.engine.result import FixError, Result, Status
from lorasetup.engine.target import Target, load_target
from tests.support.checks import gate_checks, run_checks
from tests.support.git import git

REPO = gate_checks("repo")


def run_repo(root: Path | None, script: str = "train_network.py") -> dict[str, Result]:
    return run_checks(Target(kohya_root=root, script=script), registry=REPO)


def statuses(results: dict) -> dict[str, str]:
    return {k: v.status.value for k, v in results.items()}


def test_populated_submodule_passes(make_kohya):
    results = run_repo(make_kohya("populated"))
    assert statuses(results) == {"repo.root": "ok", "repo.git": "ok", "repo.submodule": "ok", "repo.present": "ok"}
    assert "pinned commit" in results["repo.submodule"].summary


@pytest.mark.parametrize("state", ["never-initialised", "deinitialised"])
def test_empty_submodule_fails_and_blocks_present(make_kohya, state):
    results = run_repo(make_kohya(state))
    sub = results["repo.submodule"]
    assert sub.status is Status.FAIL
    assert f"empty ({state.replace('-', ' ')})" in sub.summary
    assert sub.fix is not None and sub.fix.safe
    assert "submodule update --init --recursive sd-scripts" in sub.fix.commands[0]
    assert results["repo.present"].status is Status.SKIP
    assert results["repo.present"].summary == "blocked by repo.submodule (fail)"


@pytest.mark.parametrize("state", ["never-initialised", "deinitialised"])
def test_fix_populates_the_submodule_and_recheck_proves_it(make_kohya, state):
    root = make_kohya(state)
    results, outcomes = bootstrap(lambda: Context(Target(kohya_root=root)), REPO, REPO, apply=True, yes=False)
    assert [(o.check_id, o.state) for o in outcomes] == [("repo.submodule", "fixed")]
    assert {r.check_id: r.status for r in results}["repo.present"] is Status.OK
    assert (root / "sd-scripts" / "train_network.py").is_file()
    assert git(root / "sd-scripts", "rev-parse", "HEAD") == git(root, "ls-tree", "HEAD", "sd-scripts").split()[2]


def test_other_commit_warns_with_both_commits(make_kohya):
    root = make_kohya("other-commit")
    result = run_repo(root)["repo.submodule"]
    pinned = git(root, "ls-tree", "HEAD", "sd-scripts").split()[2]
    actual = git(root / "sd-scripts", "rev-parse", "HEAD")
    assert result.status is Status.WARN
    assert pinned[:12] in result.details[0] and actual[:12] in result.details[0]


def test_dirty_submodule_warns_and_the_fix_refuses_losing_nothing(make_kohya):
    root = make_kohya("dirty")
    sub = root / "sd-scripts"
    result = run_repo(root)["repo.submodule"]
    assert result.status is Status.WARN
    assert "networks/lora.py" in result.details[0] and "my_notes.txt" in result.details[0]
    git(sub, "checkout", "-q", "HEAD~1", "--", "train_network.py")  # also off the pinned content
    with pytest.raises(FixError, match="refusing.*local changes"):
        submodule_fix(root).apply()
    assert (sub / "networks" / "lora.py").read_text().endswith("# my local edit\n")
    assert (sub / "my_notes.txt").read_text() == "do not lose me\n"


def test_uninitialised_folder_with_stray_files_is_refused_by_bootstrap(make_kohya):
    root = make_kohya("never-initialised")
    stray = root / "sd-scripts" / "train_network.py"
    stray.write_text("# copied by hand\n")
    results, outcomes = bootstrap(lambda: Context(Target(kohya_root=root)), REPO, REPO, apply=True, yes=False)
    assert outcomes[0].state == "fix failed" and "refusing" in outcomes[0].message
    assert "train_network.py" in outcomes[0].message
    assert stray.read_text() == "# copied by hand\n"
    assert {r.check_id: r.status for r in results}["repo.submodule"] is Status.FAIL


def test_zip_download_fails_without_fix(make_kohya):
    results = run_repo(make_kohya("zip"))
    assert results["repo.git"].status is Status.FAIL
    assert results["repo.git"].fix is None
    assert "--recursive" in results["repo.git"].hint
    assert results["repo.submodule"].status is Status.SKIP


def test_bare_sd_scripts_layout(make_kohya):
    results = run_repo(make_kohya("bare"))
    assert statuses(results) == {"repo.root": "ok", "repo.git": "ok", "repo.submodule": "ok", "repo.present": "ok"}
    assert results["repo.root"].summary.startswith("sd-scripts checkout")


def test_missing_entry_script_suggests_the_close_one(make_kohya):
    result = run_repo(make_kohya("bare"), script="sdxl_train_netwrok.py")["repo.present"]
    assert result.status is Status.FAIL
    assert "did you mean --script sdxl_train_network.py?" in result.details


def test_no_checkout_found(tmp_path):
    results = run_repo(None)
    assert results["repo.root"].status is Status.FAIL
    assert "--kohya-root" in results["repo.root"].hint
    assert run_repo(tmp_path / "nowhere")["repo.root"].summary.endswith("does not exist or is not a folder")


def test_discovery_finds_the_checkout_from_inside_it(make_kohya):
    root = make_kohya("populated")
    target = load_target(cwd=root / "sd-scripts" / "networks", environ={})
    assert target.kohya_root == root and target.layout == "kohya_ss"
    assert target.sd_scripts == root / "sd-scripts"


def test_failing_git_is_reported_with_its_cause(make_kohya, tmp_path):
    root = make_kohya("never-initialised")
    git(root, "config", "-f", ".gitmodules", "submodule.sd-scripts.url", (tmp_path / "gone").as_uri())
    results, outcomes = bootstrap(lambda: Context(Target(kohya_root=root)), REPO, REPO, apply=True, yes=False)
    assert outcomes[0].state == "fix failed"
    assert outcomes[0].message.startswith("git submodule update failed (exit 1): fatal:")
    assert "gone" in outcomes[0].message
    assert {r.check_id: r.status for r in results}["repo.submodule"] is Status.FAIL
