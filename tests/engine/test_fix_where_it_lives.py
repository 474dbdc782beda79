"""`lorasetup bootstrap --fix --yes` repairs each ordinary fault in the file that sets the value (issue 16), on real
files: lorasetup.toml (and [tool.lorasetup] in a pyproject.toml), the dataset TOML, the training TOML. Each fault
is red before, fixed by the one guarded editor, and green after; --dry-run changes nothing; a file edited between
the check and the fix is refused; arguments after `--` are left to the person with the corrected command.

The sd-scripts tree is the args tests' pure-Python one (its argparse is real), in a real git repository, with
--xformers/--sdpa added; the SDXL checkpoint is a real safetensors file with SDXL tensor names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from PIL import Image

from lorasetup.cli import main
from lorasetup.engine.context import Context
from lorasetup.engine.result import FixError, Status
from lorasetup.engine.runner import run_one
from lorasetup.engine.target import load_target
from tests.model.test_model import FAMILIES, write_model
from tests.support.args_tree import TREE
from tests.support.git import git, write_tree

CHECKS = ["dataset.schema", "dataset.captions", "device.precision", "device.features", "args.known", "model.family"]
ATTENTION = ('    parser.add_argument("--full_fp16", action="store_true")\n',
             '    parser.add_argument("--full_fp16", action="store_true")\n'
             '    parser.add_argument("--xformers", action="store_true")\n'
             '    parser.add_argument("--sdpa", action="store_true")\n')

LORASETUP = '''\
# the seed's way: everything here
kohya_root = "sd-scripts"
device = "cpu"
dataset_config = "dataset.toml"
train_config = "train.toml"
base_model = "sdxl.safetensors"   # an SDXL checkpoint
output_dir = "out"
train_args = """--network_module=networks.lora --mixed_precision=fp16
  --xformers --max_train_steps=10"""
'''
TRAIN = '''\
[model]
netwrok_dim = 8   # rank
[training]
learning_rate = 1e-4
'''
DATASET = '''\
[general]
enable_bucket = true

[[datasets]]
resolution = 256
batch_size = 1

  [[datasets.subsets]]
  image_dir = '{img}'
  num_repeat = 10   # ten
'''


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the six faults of issue 16 (the 8-bit optimizer is tested on its own)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "sd-scripts"
    tree = dict(TREE)
    tree["library/train_util.py"] = textwrap.dedent(TREE["library/train_util.py"]).replace(*ATTENTION)
    write_tree(root, {k: textwrap.dedent(v) for k, v in tree.items()})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tree")
    img = tmp_path / "img"
    img.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (256, 256), "gray").save(img / f"{name}.png")
        (img / f"{name}.txt").write_text("spyke, a cat\n")
    write_model(tmp_path / "sdxl.safetensors", FAMILIES["sdxl"])
    (tmp_path / "lorasetup.toml").write_text(LORASETUP)
    (tmp_path / "train.toml").write_text(TRAIN)
    (tmp_path / "dataset.toml").write_text(DATASET.format(img=img))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.toml"))}


def doctor(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["doctor", "--only", *CHECKS, *extra])
    return code, capsys.readouterr().err


def test_the_six_faults_are_red_then_fixed_where_they_live_then_green(setup: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, before = doctor(capsys)
    assert code == 1
    for words in ("num_repeat", "caption", "mixed precision fp16", "--xformers", "netwrok_dim", "SDXL base model"):
        assert words in before, words
    assert main(["bootstrap", "--fix", "--yes", "--only", *CHECKS]) == 0
    out = capsys.readouterr().err
    assert "still failing" not in out.split("fixes:")[-1].split("\n\n")[0]
    lorasetup = (setup / "lorasetup.toml").read_text()
    assert 'script = "sdxl_train_network.py"' in lorasetup
    assert 'train_args = """--network_module=networks.lora --mixed_precision=no\n  --max_train_steps=10 --sdpa"""' \
        in lorasetup and "# an SDXL checkpoint" in lorasetup
    assert (setup / "train.toml").read_text() == TRAIN.replace("netwrok_dim = 8", "network_dim = 8")
    dataset = (setup / "dataset.toml").read_text()
    assert "num_repeats = 10   # ten" in dataset and 'caption_extension = ".txt"' in dataset
    for name in ("lorasetup.toml", "train.toml", "dataset.toml"):
        assert list(setup.glob(f"{name}.bak-*")), name
    code, after = doctor(capsys)
    assert code == 0, after


def test_dry_run_and_fix_without_yes_change_nothing_they_should_not(setup: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = files(setup)
    assert main(["bootstrap", "--fix", "--dry-run", "--only", *CHECKS]) == 1
    plan = capsys.readouterr().err
    assert files(setup) == before and not list(setup.glob("*.bak-*"))
    assert "rename `netwrok_dim` to `network_dim`" in plan and "--mixed_precision=no" in plan
    main(["bootstrap", "--fix", "--only", *CHECKS])  # the safe fixes only: the caption extension
    out = capsys.readouterr().err
    assert "needs --yes" in out
    changed = {name for name, data in files(setup).items() if before[name] != data}
    assert changed == {"dataset.toml"} and 'caption_extension = ".txt"' in (setup / "dataset.toml").read_text()


def run_check(check_id: str) -> tuple[Status, object]:
    from lorasetup.checks import by_id
    with Context(load_target()) as ctx:
        result = run_one(ctx, by_id()[check_id])
    return result.status, result.fix


@pytest.mark.parametrize("check_id, name", [("device.precision", "lorasetup.toml"), ("args.known", "train.toml"),
                                            ("dataset.schema", "dataset.toml")])
def test_a_file_edited_after_the_check_is_refused(setup: Path, check_id: str, name: str) -> None:
    status, fix = run_check(check_id)
    assert status is Status.FAIL and fix is not None
    path = setup / name
    path.write_text(path.read_text() + "# edited by the person meanwhile\n")
    edited = path.read_bytes()
    with pytest.raises(FixError, match="changed since the check read it"):
        fix.apply()  # type: ignore[attr-defined]
    assert path.read_bytes() == edited and not list(setup.glob("*.bak-*"))


def test_tool_lorasetup_in_a_pyproject_is_edited_in_its_table(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (setup / "lorasetup.toml").read_text().replace("# the seed's way: everything here\n", "")
    (setup / "lorasetup.toml").unlink()
    (setup / "pyproject.toml").write_text('[project]\nname = "my-lora"\n\n[tool.lorasetup]\n' + text)
    assert main(["bootstrap", "--fix", "--yes", "--only", "device.precision", "device.features", "model.family"]) == 0
    capsys.readouterr()
    fixed = (setup / "pyproject.toml").read_text()
    assert fixed.startswith('[project]\nname = "my-lora"\n\n[tool.lorasetup]\n')
    assert "--mixed_precision=no" in fixed and "--sdpa" in fixed and 'script = "sdxl_train_network.py"' in fixed


def test_arguments_after_dashes_get_the_corrected_command_and_count_as_needs_you(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (setup / "lorasetup.toml").write_text(LORASETUP.replace("--mixed_precision=fp16\n  --xformers ", ""))
    before = files(setup)
    assert main(["bootstrap", "--fix", "--yes", "--only", "device.precision", "--",
                 "--mixed_precision", "fp16"]) == 1
    out = capsys.readouterr().err
    assert files(setup) == before
    assert "run again with: -- --mixed_precision no" in out and "1 need you" in out
    assert "sd-scripts/train_network.py --config_file" in out  # the full training command, ready to paste


def test_an_unknown_lorasetup_toml_key_is_renamed_with_consent(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = setup / "lorasetup.toml"
    path.write_text(path.read_text().replace("dataset_config =", "dataset_confg ="))
    assert main(["doctor", "--only", "dataset.schema"]) == 2
    assert "Did you mean `dataset_config`? `lorasetup bootstrap --fix --yes` renames it" in capsys.readouterr().err
    assert main(["bootstrap", "--fix", "--only", "dataset.schema"]) == 2  # no --yes: the plan, nothing changed
    assert "needs --fix --yes" in capsys.readouterr().err and "dataset_confg" in path.read_text()
    main(["bootstrap", "--fix", "--yes", "--only", "dataset.schema"])
    assert "[fixed] lorasetup.toml: renamed `dataset_confg` to `dataset_config`" in capsys.readouterr().err
    assert 'dataset_config = "dataset.toml"' in path.read_text()


def test_wrong_types_in_the_training_toml_are_rewritten_as_meant(setup: Path) -> None:
    """`v2 = "false"` is ON for sd-scripts (a non-empty string); a list written as one string is walked by
    character. The fix writes what the person meant and says how sd-scripts would have read it."""
    (setup / "train.toml").write_text('[model]\nnetwork_dim = 8\nv2 = "false"  # SD1\n'
                                      'network_args = "conv_dim=4 conv_alpha=1"\nlearning_rate = "1e-4"\n')
    status, fix = run_check("args.known")
    assert status is Status.FAIL and fix is not None
    assert "ON, not OFF" in fix.description and "one character at a time" in fix.description  # type: ignore
    fix.apply()  # type: ignore[attr-defined]
    assert (setup / "train.toml").read_text() == ('[model]\nnetwork_dim = 8\nv2 = false  # SD1\n'
                                                  'network_args = ["conv_dim=4", "conv_alpha=1"]\n'
                                                  'learning_rate = 0.0001\n')
    assert run_check("args.known")[0] is Status.OK


def test_an_8bit_optimizer_without_bitsandbytes_becomes_adamw(setup: Path) -> None:
    """The training interpreter here has no bitsandbytes: one real optimizer step fails, the fix sets AdamW."""
    path = setup / "lorasetup.toml"
    path.write_text(LORASETUP.replace("--xformers", "--optimizer_type=AdamW8bit"))
    status, fix = run_check("device.features")
    assert status is Status.FAIL and fix is not None
    fix.apply()  # type: ignore[attr-defined]
    assert "--optimizer_type=AdamW --max_train_steps" in path.read_text()
    assert run_check("device.features")[0] is Status.OK
