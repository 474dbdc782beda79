"""lorasetup.sd.argspec: the options read statically from an entry script equal what its real argparse builds,
and the cache follows the checkout's commit and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from lorasetup.sd.argspec import ArgSpecError, extract, git_head, load_argspec
from tests.support.args_tree import TREE
from tests.support.git import write_tree

GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t.invalid"}

DUMP_PARSER = """
import argparse, json, sys
sys.path.insert(0, sys.argv[1])
module = __import__(sys.argv[2])
parser = module.setup_parser()
names = {argparse._StoreAction: "store", argparse._StoreTrueAction: "store_true",
         argparse._StoreFalseAction: "store_false"}
out = {}
for a in parser._actions:
    if isinstance(a, argparse._HelpAction):
        continue
    default = a.default if isinstance(a.default, (str, int, float, bool, type(None))) else repr(a.default)
    out[a.dest] = {"flags": list(a.option_strings), "action": names.get(type(a), type(a).__name__),
                   "type": getattr(a.type, "__name__", None), "nargs": None if a.nargs == 0 else a.nargs,
                   "choices": list(a.choices) if a.choices is not None else None, "default": default}
print(json.dumps(out))
"""


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT})
    return proc.stdout.strip()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = write_tree(tmp_path / "sd-scripts", TREE)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tree")
    return root


@pytest.mark.parametrize("script", ["train_network.py", "sdxl_train_network.py", "flux_train_network.py",
                                    "fine_tune.py"])
def test_static_options_equal_the_real_parser(tree: Path, script: str) -> None:
    proc = subprocess.run([sys.executable, "-c", DUMP_PARSER, str(tree), script[:-3]], capture_output=True,
                          text=True, timeout=60, check=True)
    real = json.loads(proc.stdout)
    spec = extract(tree, script)
    ours = {}
    for dest, opt in spec.options.items():
        typ = {"path": "Path"}.get(opt.type, opt.type)
        ours[dest] = {"flags": list(opt.flags), "action": opt.action, "type": typ, "nargs": opt.nargs,
                      "choices": list(opt.choices) if opt.choices is not None else None,
                      "default": opt.default if opt.default_src is None else opt.default_src}
    assert ours == real


def test_conditional_helpers_follow_the_arguments_of_the_call(tree: Path) -> None:
    network = extract(tree, "train_network.py")
    fine_tune = extract(tree, "fine_tune.py")
    assert "reg_data_dir" in network and "in_json" not in network          # add_dataset_arguments(p, True, False, True)
    assert "in_json" in fine_tune and "reg_data_dir" not in fine_tune      # add_dataset_arguments(p, False, True, True)
    assert "prior_loss_weight" in network and "prior_loss_weight" not in fine_tune
    assert "not_a_training_option" not in network                          # train_util's own __main__ parser
    assert "cache_text_encoder_outputs" in extract(tree, "sdxl_train_network.py")
    assert {"clip_l", "t5xxl", "ae"} <= set(extract(tree, "flux_train_network.py").options)
    assert network.get("lr_warmup_steps").type == "int_or_float"
    assert network.get("network_args").is_list and not network.get("network_dim").is_list
    line = (tree / "train_network.py").read_text().splitlines().index('    parser.add_argument("--network_dim", '
                                                                      'type=int, default=None)') + 1
    assert network.get("network_dim").where == f"train_network.py:{line}"


def test_flag_matching_and_suggestions(tree: Path) -> None:
    spec = extract(tree, "train_network.py")
    assert [o.dest for o in spec.match_flag("--network_dim")] == ["network_dim"]
    assert [o.dest for o in spec.match_flag("--network_d")] == ["network_dim"]
    assert len(spec.match_flag("--network_")) > 1
    assert spec.match_flag("--nope") == [] and spec.match_flag("-x") == []
    assert spec.suggest("netwrok_dim") == "network_dim"
    assert spec.suggest("--output-dir") == "output_dir"
    assert spec.suggest("zzzz") is None


def test_the_cache_is_used_until_a_source_file_or_the_commit_changes(tree: Path, _own_cache: Path) -> None:
    first = load_argspec(tree, "train_network.py")
    assert not first.from_cache and first.commit == git(tree, "rev-parse", "HEAD")
    assert len(list((_own_cache / "lorasetup").glob("argspec-*.json"))) == 1
    second = load_argspec(tree, "train_network.py")
    assert second.from_cache and second.options == first.options

    util = tree / "library" / "train_util.py"
    util.write_text(util.read_text().replace('"--output_name"', '"--output_basename"'))
    edited = load_argspec(tree, "train_network.py")
    assert not edited.from_cache and "output_basename" in edited and "output_name" not in edited
    assert load_argspec(tree, "train_network.py").from_cache

    git(tree, "commit", "-qam", "rename output_name")
    after_commit = load_argspec(tree, "train_network.py")
    assert not after_commit.from_cache and after_commit.commit == git(tree, "rev-parse", "HEAD")


def test_without_git_file_stats_alone_key_the_cache(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "zip-install", TREE)
    assert git_head(root) is None
    assert not load_argspec(root, "train_network.py").from_cache
    assert load_argspec(root, "train_network.py").from_cache
    script = root / "train_network.py"
    time.sleep(0.01)
    script.write_text(script.read_text() + "\n# edited\n")
    assert not load_argspec(root, "train_network.py").from_cache


def test_an_unwritable_cache_costs_only_speed(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert len(load_argspec(tree, "train_network.py")) == len(extract(tree, "train_network.py"))
    assert not load_argspec(tree, "train_network.py").from_cache


def test_a_corrupt_cache_file_is_ignored(tree: Path, _own_cache: Path) -> None:
    load_argspec(tree, "train_network.py")
    for path in (_own_cache / "lorasetup").glob("argspec-*.json"):
        path.write_text("{not json")
    assert not load_argspec(tree, "train_network.py").from_cache
    assert load_argspec(tree, "train_network.py").from_cache


def test_git_head_reads_branches_packed_refs_detached_heads_and_gitdir_files(tree: Path, tmp_path: Path) -> None:
    head = git(tree, "rev-parse", "HEAD")
    assert git_head(tree) == head
    git(tree, "pack-refs", "--all")
    assert git_head(tree) == head
    git(tree, "checkout", "-q", "--detach")
    assert git_head(tree) == head
    separate = tmp_path / "separate"
    subprocess.run(["git", "init", "-q", "--separate-git-dir", str(tmp_path / "gitdir"), str(separate)],
                   check=True, env={**os.environ, **GIT})
    (separate / "f").write_text("x")
    git(separate, "add", "f")
    git(separate, "commit", "-qm", "f")
    assert (separate / ".git").is_file()
    assert git_head(separate) == git(separate, "rev-parse", "HEAD")


def test_missing_or_parserless_scripts_are_clear_errors(tree: Path) -> None:
    with pytest.raises(ArgSpecError, match="entry script not found"):
        extract(tree, "nope.py")
    (tree / "broken.py").write_text("def (:\n")
    with pytest.raises(ArgSpecError, match="cannot parse"):
        extract(tree, "broken.py")
    (tree / "plain.py").write_text("import os\nprint(os.name)\n")
    with pytest.raises(ArgSpecError, match="no argparse options found"):
        extract(tree, "plain.py")


def test_reading_source_with_invalid_escapes_prints_no_warnings(tree: Path) -> None:
    """sd-scripts has strings like "\\(" (library/custom_train_functions.py); compiling them must stay quiet."""
    util = tree / "library" / "utils.py"
    util.write_text(util.read_text() + 'PATTERN = "\\(\\d"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "console_log_level" in extract(tree, "train_network.py")
