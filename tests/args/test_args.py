"""The args gate on small sd-scripts-like trees whose argparse code is written in tests/support/args_tree.py (pure
Python, so the tests can also run the real argparse on them and compare)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lorasetup.checks import by_id
from lorasetup.checks.args.checks import save_counts
from lorasetup.engine.context import Context
from lorasetup.engine.result import FixError, Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd.trainargs import train_args
from tests.support.args_tree import TREE
from tests.support.checks import run_checks
from tests.support.git import write_tree

GOOD = """
[model]
pretrained_model_name_or_path = "model.safetensors"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
[training]
output_dir = "out"
mixed_precision = "fp16"
resolution = "512,512"
learning_rate = 1e-4
max_train_steps = 920
save_every_n_steps = 230
network_args = ["conv_dim=4"]
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The argspec cache of these tests lives in a temporary folder, never in the real user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("sd-scripts"), TREE)


def run(root: Path, toml: str | None = None, extra: list[str] | None = None, script: str = "train_network.py",
        dataset: str | None = None, check_id: str = "args.known", workdir: Path | None = None) -> Result:
    """Run one args check on `root` with a training TOML (and dataset TOML) written into `workdir`."""
    workdir = workdir or root / "work"
    workdir.mkdir(exist_ok=True)
    config = None
    if toml is not None:
        config = workdir / "config.toml"
        config.write_text(textwrap.dedent(toml))
    dataset_path = None
    if dataset is not None:
        dataset_path = workdir / "dataset.toml"
        dataset_path.write_text(textwrap.dedent(dataset))
    target = Target(kohya_root=root, python=Path(sys.executable), script=script, train_config=config,
                    train_args=list(extra or []), dataset_config=dataset_path)
    return run_checks(target, registry=[by_id()[check_id]])[check_id]


def joined(result: Result) -> str:
    return "\n".join([result.summary, *result.details, result.hint or ""])


# --- args.known --------------------------------------------------------------------------------------------

def test_a_good_config_passes_every_args_check(tree: Path, tmp_path: Path) -> None:
    for check_id in ("args.known", "args.rules", "args.output"):
        result = run(tree, GOOD, check_id=check_id, workdir=tmp_path)
        assert result.status is Status.OK, joined(result)
    known = run(tree, GOOD, workdir=tmp_path)
    assert "options of train_network.py" in known.summary


def test_no_training_arguments_is_a_skip_with_the_way_to_pass_them(tree: Path) -> None:
    result = run(tree)
    assert result.status is Status.SKIP
    assert "--train-config" in result.hint


def test_a_typo_in_the_toml_fails_with_place_and_did_you_mean(tree: Path) -> None:
    result = run(tree, GOOD + 'netwrok_args = ["conv_dim=4"]\nnum_repeat = 3\n')
    assert result.status is Status.FAIL
    text = joined(result)
    assert "config.toml [training] netwrok_args" in text and "Did you mean `network_args`?" in text
    assert "drops it silently" in text
    assert "2 unknown" in result.summary


def test_an_option_of_another_script_is_unknown_here(tree: Path) -> None:
    """in_json exists for fine_tune.py (support_caption=True) but not for this train_network.py."""
    assert run(tree, 'output_dir = "out"\nin_json = "meta.json"\n', script="fine_tune.py").status is Status.OK
    result = run(tree, GOOD + 'in_json = "meta.json"\n')
    assert result.status is Status.FAIL and "`in_json` is not an option of train_network.py" in joined(result)


@pytest.mark.parametrize("line, expected", [
    ('mixed_precision = "fp32"', 'is not one of "no", "fp16", "bf16"'),
    ('mixed_precision = "FP16"', 'did you mean "fp16"?'),
    ("resolution = 512", "'int' object has no attribute 'split'"),
    ("resolution = [512, 512]", 'Write resolution = "512,512"'),
    ('flip_aug = "false"', '"false" turns it ON'),
    ('learning_rate = "1e-4"', "write 0.0001 without quotes"),
    ("network_dim = 16.0", "write 16"),
    ("network_dim = true", "expected an integer"),
    ('network_args = "conv_dim=4 conv_alpha=1"', 'Write network_args = ["conv_dim=4", "conv_alpha=1"]'),
    ("optimizer_args = [1, 2]", "item 0 (1) is an integer"),
    ('text_encoder_lr = ["a"]', "expected a number"),
    ("zero_stage = 5", "is not one of 0, 1, 2, 3"),
    ('save_model_as = "bin"', 'is not one of none, "ckpt", "pt", "safetensors"'),
    ("output_name = 7", 'write output_name = "7"'),
    ("network_module = { a = 1 }", "is a table"),
])
def test_values_sd_scripts_would_take_as_is_are_checked_against_type_and_choices(
        tree: Path, line: str, expected: str) -> None:
    key = line.split(" ")[0]
    toml = "\n".join(good for good in GOOD.splitlines() if not good.startswith(key + " ")) + "\n" + line + "\n"
    result = run(tree, toml)
    assert result.status is Status.FAIL, joined(result)
    assert expected in joined(result)
    assert f"config.toml [training] {key}" in joined(result)


def test_values_that_fit_pass(tree: Path) -> None:
    extra = """
    text_encoder_lr = 5e-5
    unet_lr = 1
    lr_warmup_steps = "10%"
    save_model_as = "ckpt"
    dataset_config = "dataset.toml"
    flip_aug = false
    """
    assert run(tree, GOOD + textwrap.dedent(extra)).status is Status.OK


CLI_CASES: list[tuple[list[str], str | None]] = [
    (["--network_dim", "8"], None),
    (["--network_dim=8"], None),
    (["--network_d", "8"], None),                       # a unique prefix is accepted by argparse
    (["--flip_aug"], None),
    (["--text_encoder_lr", "1e-4", "5e-5"], None),
    (["--text_encoder_lr"], None),
    (["--network_args", "conv_dim=4", "conv_alpha=1"], None),
    (["--noise_offset", "-0.1"], None),
    (["--mixed_precision", "bf16"], None),
    (["--lr_warmup_steps", "10%"], None),
    (["--network_dimm", "8"], "unrecognized arguments: --network_dimm"),
    (["--network-dim", "8"], "unrecognized arguments: --network-dim"),
    (["--lr", "1"], "ambiguous option: --lr could match"),
    (["--flip_aug", "true"], "unrecognized arguments: true"),
    (["--flip_aug=true"], "ignored explicit argument 'true'"),
    (["--network_dim", "eight"], "invalid int value: 'eight'"),
    (["--network_dim", "8", "16"], "unrecognized arguments: 16"),
    (["--network_dim"], "expected one argument"),
    (["--learning_rate", "fast"], "invalid float value: 'fast'"),
    (["--mixed_precision", "fp32"], "invalid choice: 'fp32'"),
    (["--zero_stage", "4"], "invalid choice: '4'"),
    (["stray", "--flip_aug"], "unrecognized arguments: stray"),
    (["--help"], "exits without training"),
]


def test_flags_after_double_dash_get_argparse_verdicts(tree: Path) -> None:
    for extra, expected in CLI_CASES:
        result = run(tree, GOOD, extra)
        if expected is None:
            assert result.status is Status.OK, (extra, joined(result))
        else:
            assert result.status is Status.FAIL and expected in joined(result), (extra, joined(result))


REAL_ARGPARSE = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])
import train_network
verdicts = []
for argv in json.loads(sys.argv[2]):
    parser = train_network.setup_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
        verdicts.append(True)
    except SystemExit as exc:
        verdicts.append(exc.code == 0 and "--help" not in argv)
print(json.dumps(verdicts))
"""


def test_cli_verdicts_agree_with_the_real_argparse_of_the_tree(tree: Path) -> None:
    """The fixture's own parser (real argparse, in a subprocess) accepts exactly the flags args.known accepts."""
    cases = [extra for extra, _ in CLI_CASES]
    proc = subprocess.run([sys.executable, "-c", REAL_ARGPARSE, str(tree), json.dumps(cases)],
                          capture_output=True, text=True, timeout=60, check=True)
    real = json.loads(proc.stdout)
    ours = [run(tree, GOOD, extra).status is Status.OK for extra in cases]
    assert ours == real, [(c, r) for c, r, o in zip(cases, real, ours) if r != o]


def test_a_missing_or_broken_training_config_fails_with_the_file(tree: Path, tmp_path: Path) -> None:
    missing = run(tree, extra=["--config_file", str(tmp_path / "nope.toml")])
    assert missing.status is Status.FAIL and "nope.toml: training config not found" in missing.summary
    broken = run(tree, "[training\noutput_dir = 1\n")
    assert broken.status is Status.FAIL and "line 1" in broken.summary


def test_a_script_without_a_parser_fails_cleanly(tree: Path) -> None:
    (tree / "no_parser.py").write_text("print('hello')\n")
    result = run(tree, GOOD, script="no_parser.py")
    assert result.status is Status.FAIL and "no argparse options found" in result.summary


# --- args.rules --------------------------------------------------------------------------------------------

def rules(tree: Path, toml: str, extra: list[str] | None = None, **kw: Any) -> Result:
    return run(tree, toml, extra, check_id="args.rules", **kw)


@pytest.mark.parametrize("extra, script, quoted", [
    ("cache_latents = true\ncolor_aug = true", "train_network.py",
     "when caching latents, either color_aug or random_crop cannot be used"),
    ("cache_latents_to_disk = true\nrandom_crop = true", "sdxl_train_network.py",
     "when caching latents, either color_aug or random_crop cannot be used"),
    ("cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\nshuffle_caption = true",
     "sdxl_train_network.py", "when caching Text Encoder output, either caption_dropout_rate"),
    ("cache_text_encoder_outputs_to_disk = true", "sdxl_train_network.py",
     "network for Text Encoder cannot be trained with caching Text Encoder outputs"),
    ('full_fp16 = true\nmixed_precision = "bf16"', "train_network.py", "full_fp16 requires mixed precision='fp16'"),
    ("full_bf16 = true", "train_network.py", "full_bf16 requires mixed precision='bf16'"),
    ('fp8_base = true\nmixed_precision = "no"', "train_network.py", "fp8_base requires mixed precision"),
    ("adaptive_noise_scale = 0.01", "train_network.py", "adaptive_noise_scale requires noise_offset"),
    ("v2 = true", "sdxl_train_network.py", "v2 cannot be enabled in SDXL training"),
    ('use_8bit_adam = true\noptimizer_type = "AdamW"', "train_network.py",
     "both option use_8bit_adam and optimizer_type are specified"),
    ("fused_backward_pass = true", "train_network.py", "fused_backward_pass currently only works with"),
    ('network_args = ["conv_dim"]', "train_network.py", "not enough values to unpack (expected 2, got 1)"),
    ('optimizer_args = ["a=b=c"]', "train_network.py", "too many values to unpack (expected 2)"),
    ('lr_scheduler_args = ["mode=cosine"]', "train_network.py", "mode='cosine'"),
    ('optimizer_args = ["decouple=true"]', "train_network.py", "malformed node or string"),
    ("bucket_reso_steps = 1", "train_network.py", "bucket_reso_steps is 1. it must be divisible by 64."),
    ("bucket_reso_steps = 32", "flux_train_network.py", "bucket_reso_steps is 32. it must be divisible by 64."),
    ("bucket_reso_steps = 48", "sdxl_train_network.py", "bucket_reso_steps is 48. it must be divisible by 32."),
    ('resolution = "512x512"', "train_network.py", 'invalid literal for int()'),
    ('resolution = "512,512,3"', "train_network.py", "resolution must be 'size' or 'width,height'"),
    ("enable_bucket = true\nmin_bucket_reso = 640", "train_network.py",
     "min_bucket_reso must be equal or less than resolution"),
    ("enable_bucket = true\nmax_bucket_reso = 256", "train_network.py",
     "max_bucket_reso must be equal or greater than resolution"),
    ('network_module = "networks.lorra"', "train_network.py", 'Did you mean "networks.lora"?'),
])
def test_late_assertions_fail_early_in_sd_scripts_words(tree: Path, extra: str, script: str, quoted: str) -> None:
    keys = {line.split(" ")[0] for line in extra.splitlines()}
    base = "\n".join(good for good in GOOD.splitlines() if good.split(" ")[0] not in keys)
    result = rules(tree, base + "\n" + extra + "\n", script=script)
    assert result.status is Status.FAIL, joined(result)
    assert quoted in joined(result)
    assert "config.toml [" in joined(result) or "config.toml " in joined(result)


@pytest.mark.parametrize("extra, script", [
    ("bucket_reso_steps = 32", "sdxl_train_network.py"),
    ("bucket_reso_steps = 128", "train_network.py"),
    ("cache_latents = true\nflip_aug = true", "train_network.py"),
    ("cache_text_encoder_outputs = true\nnetwork_train_unet_only = true", "sdxl_train_network.py"),
    ('full_fp16 = true\nmixed_precision = "fp16"', "train_network.py"),
    ("adaptive_noise_scale = 0.01\nnoise_offset = 0.05", "train_network.py"),
    ('network_args = ["conv_dim=4", "algo=lora", "preset=attn-mlp"]', "train_network.py"),
    ('optimizer_args = ["betas=(0.9,0.99)", "decouple=True", "name=\'x\'"]', "train_network.py"),
    ('network_module = "lycoris.kohya"', "train_network.py"),
    ("enable_bucket = true\nmin_bucket_reso = 320\nmax_bucket_reso = 1000", "train_network.py"),
])
def test_accepted_combinations_pass(tree: Path, extra: str, script: str) -> None:
    keys = {line.split(" ")[0] for line in extra.splitlines()}
    base = "\n".join(good for good in GOOD.splitlines() if good.split(" ")[0] not in keys)
    result = rules(tree, base + "\n" + extra + "\n", script=script)
    assert result.status is Status.OK, joined(result)


def test_rules_apply_only_where_the_script_asserts_them(tree: Path) -> None:
    """fine_tune.py here has no caching or precision assertions, so the same settings pass there."""
    toml = GOOD.replace('network_module = "networks.lora"\n', "") + "cache_latents = true\ncolor_aug = true\n" \
        "full_fp16 = true\n"
    assert rules(tree, toml, script="fine_tune.py").status is Status.OK
    assert rules(tree, toml).status is Status.FAIL


def test_subset_values_from_the_dataset_config_count_for_caching_rules(tree: Path) -> None:
    dataset = """
    [general]
    shuffle_caption = false
    [[datasets]]
    resolution = 512
    [[datasets.subsets]]
    image_dir = "a"
    [[datasets.subsets]]
    image_dir = "b"
    color_aug = true
    """
    result = rules(tree, GOOD + "cache_latents = true\n", dataset=dataset)
    assert result.status is Status.FAIL
    assert "dataset.toml datasets[0].subsets[1].color_aug" in joined(result)
    assert "subsets[0]" not in joined(result)


def test_bucket_steps_set_by_the_dataset_config_shadow_the_training_arg(tree: Path) -> None:
    dataset = """
    [general]
    bucket_reso_steps = 64
    [[datasets]]
    [[datasets.subsets]]
    image_dir = "a"
    """
    assert rules(tree, GOOD + "bucket_reso_steps = 1\n", dataset=dataset).status is Status.OK


@pytest.mark.parametrize("toml, script, expected", [
    (GOOD.replace('network_module = "networks.lora"\n', ""), "train_network.py",
     'network_module is not set (it has no default)'),
    (GOOD.replace('network_module = "networks.lora"\n', ""), "flux_train_network.py",
     'Add network_module = "networks.lora_flux"'),
])
def test_a_missing_network_module_fails_with_the_module_for_this_script(
        tree: Path, toml: str, script: str, expected: str) -> None:
    result = rules(tree, toml, script=script)
    assert result.status is Status.FAIL and expected in joined(result)


@pytest.mark.parametrize("extra, expected", [
    ("network_alpha = 32", "alpha/dim = 2"),
    ('optimizer_type = "Prodigy"', "learning rate is too low. If using D-Adaptation or Prodigy"),
    ('optimizer_type = "DAdaptAdam"\nlearning_rate = 1.0\nunet_lr = 0.5', "only the first one will take effect"),
])
def test_questionable_settings_warn(tree: Path, extra: str, expected: str) -> None:
    keys = {line.split(" ")[0] for line in extra.splitlines()}
    base = "\n".join(good for good in GOOD.splitlines() if good.split(" ")[0] not in keys)
    result = rules(tree, base + "\n" + extra + "\n")
    assert result.status is Status.WARN and expected in joined(result), joined(result)


def test_prodigy_at_lr_one_is_fine(tree: Path) -> None:
    toml = GOOD.replace("learning_rate = 1e-4", "learning_rate = 1.0") + 'optimizer_type = "prodigy"\n'
    assert rules(tree, toml).status is Status.OK


# --- the bucket_reso_steps fix -----------------------------------------------------------------------------

BUCKET_TOML = """\
# my training config
[training]
output_dir = "out"          # where it goes
  bucket_reso_steps   =  1  # tried this
network_module = "networks.lora"
"""


def test_the_bucket_fix_edits_only_that_value_and_keeps_a_backup(tree: Path, tmp_path: Path) -> None:
    result = rules(tree, BUCKET_TOML, workdir=tmp_path)
    assert result.status is Status.FAIL and result.fix is not None and result.fix.safe
    assert "bucket_reso_steps = 1 -> 64" in result.fix.commands[0]
    result.fix.apply()
    config = tmp_path / "config.toml"
    assert config.read_text() == BUCKET_TOML.replace("=  1  #", "=  64  #")
    backups = list(tmp_path.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == BUCKET_TOML
    target = Target(kohya_root=tree, python=Path(sys.executable), train_config=config)
    assert run_checks(target, registry=[by_id()["args.rules"]])["args.rules"].status is Status.OK


def test_the_bucket_fix_refuses_a_file_changed_since_the_check(tree: Path, tmp_path: Path) -> None:
    result = rules(tree, BUCKET_TOML, workdir=tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(BUCKET_TOML + "seed = 1\n")
    with pytest.raises(FixError, match="changed since the check read it"):
        result.fix.apply()
    assert config.read_text() == BUCKET_TOML + "seed = 1\n"
    assert not list(tmp_path.glob("config.toml.bak-*"))


def test_no_fix_is_offered_for_a_command_line_value(tree: Path) -> None:
    result = rules(tree, GOOD, ["--bucket_reso_steps", "8"])
    assert result.status is Status.FAIL and result.fix is None
    assert "--bucket_reso_steps: " in joined(result) or "--bucket_reso_steps " in joined(result)
    assert "Pass --bucket_reso_steps 64" in joined(result)


@pytest.mark.parametrize("text, expected", [
    ("a = 1\r\nbucket_reso_steps = 1\r\nb = 2\r\n", "a = 1\r\nbucket_reso_steps = 64\r\nb = 2\r\n"),
    ('"bucket_reso_steps" = 1 # q\n', '"bucket_reso_steps" = 64 # q\n'),
    ("[x]\nbucket_reso_steps=1\n[y]\nbucket_reso_steps = 2\n",
     "[x]\nbucket_reso_steps=64\n[y]\nbucket_reso_steps = 64\n"),
    ("x = { bucket_reso_steps = 1 }\n", None),
])
def test_the_bucket_fix_is_a_targeted_edit_of_every_place_that_sets_it(tree: Path, tmp_path: Path, text: str,
                                                                       expected: str | None) -> None:
    """sd-scripts flattens the sections, so every `bucket_reso_steps` is set; an inline table is not reached by a
    line edit, so no fix is offered there and the hint says what to change."""
    toml = 'network_module = "networks.lora"\n' + text
    result = rules(tree, toml, workdir=tmp_path)
    assert result.status is Status.FAIL
    if expected is None:
        assert result.fix is None and "bucket_reso_steps 64" in joined(result)
        return
    assert result.fix is not None
    result.fix.apply()
    assert (tmp_path / "config.toml").read_bytes().decode() == 'network_module = "networks.lora"\n' + expected


# --- args.output -------------------------------------------------------------------------------------------

def output(tree: Path, toml: str, tmp_path: Path, extra: list[str] | None = None) -> Result:
    return run(tree, toml, extra, check_id="args.output", workdir=tmp_path)


def test_the_seed_schedule_saves_five_files(tree: Path, tmp_path: Path) -> None:
    """920 steps, a save every 230: steps 230, 460, 690, 920 and the final file."""
    toml = GOOD.replace('"out"', f'"{tmp_path / "out"}"')
    result = output(tree, toml, tmp_path)
    assert result.status is Status.OK
    assert "5 LoRA file(s) of about 38 MB (sd1, rank 16)" in joined(result)  # fp32 without save_precision
    result = output(tree, toml + 'save_precision = "fp16"\n', tmp_path)
    assert "5 LoRA file(s) of about 19 MB (sd1, rank 16)" in joined(result)


def args_for(tree: Path, toml: str, tmp_path: Path, script: str = "train_network.py") -> Any:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(toml))
    with Context(Target(kohya_root=tree, python=Path(sys.executable), script=script, train_config=config)) as ctx:
        return train_args(ctx)


@pytest.mark.parametrize("toml, expected", [
    ("max_train_steps = 920\nsave_every_n_steps = 230", (5, 0, 0)),
    ("max_train_steps = 1000\nsave_every_n_steps = 100\nsave_last_n_steps = 300", (5, 0, 0)),
    ("max_train_epochs = 10\nsave_every_n_epochs = 2", (5, 0, 0)),
    ("max_train_epochs = 10\nsave_every_n_epochs = 1\nsave_last_n_epochs = 3\nsave_state = true", (4, 4, 0)),
    ("max_train_epochs = 10\nsave_n_epoch_ratio = 3", (4, 0, 0)),
    ("max_train_steps = 920\nsave_every_n_epochs = 1", (1, 0, 1)),
    ("max_train_steps = 920\nsave_every_n_epochs = 1\nsave_last_n_epochs = 2", (3, 0, 0)),
    ("max_train_epochs = 4\nsave_every_n_steps = 50", (1, 0, 1)),
    ("save_state_on_train_end = true", (1, 1, 0)),
])
def test_save_counts_follow_the_save_schedule(tree: Path, tmp_path: Path, toml: str,
                                              expected: tuple[int, int, int]) -> None:
    files, states, unknown = save_counts(args_for(tree, toml, tmp_path))
    assert (files, states, len(unknown)) == expected, unknown


def test_output_dir_unset_fails(tree: Path, tmp_path: Path) -> None:
    result = output(tree, GOOD.replace('output_dir = "out"\n', ""), tmp_path)
    assert result.status is Status.FAIL and "output_dir is not set" in result.summary


def test_output_dir_that_cannot_be_created_fails(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = output(tree, GOOD.replace('"out"', f'"{tmp_path / "afile" / "out"}"'), tmp_path)
    assert result.status is Status.FAIL and "is a file" in result.summary
    result = output(tree, GOOD.replace('"out"', f'"{tmp_path / "afile"}"'), tmp_path)
    assert result.status is Status.FAIL and "is not a folder" in result.summary


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so there is no read-only folder to test")
def test_a_read_only_output_parent_fails(tree: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = output(tree, GOOD.replace('"out"', f'"{locked / "out"}"'), tmp_path)
    finally:
        locked.chmod(0o700)
    assert result.status is Status.FAIL and "Permission denied" in result.summary


def test_checkpoints_larger_than_the_free_disk_fail(tree: Path, tmp_path: Path) -> None:
    """A rank no disk can hold: the estimate is compared with the real free space of that file system."""
    toml = GOOD.replace("network_dim = 16", "network_dim = 100000000").replace('"out"', f'"{tmp_path / "o"}"')
    result = output(tree, toml, tmp_path)
    assert result.status is Status.FAIL
    assert "not enough disk" in result.summary and "No space left on device" in result.summary


def test_logging_and_sample_prompts(tree: Path, tmp_path: Path) -> None:
    base = GOOD.replace('"out"', f'"{tmp_path / "out"}"')
    result = output(tree, base + 'log_with = "tensorboard"\n', tmp_path)
    assert result.status is Status.FAIL and "logging_dir is required when log_with is tensorboard" in joined(result)
    assert output(tree, base + f'log_with = "all"\nlogging_dir = "{tmp_path / "logs"}"\n', tmp_path).status \
        is Status.OK
    result = output(tree, base + "sample_every_n_steps = 100\n", tmp_path)
    assert result.status is Status.FAIL and "sample_prompts is not set" in result.summary
    result = output(tree, base + f'sample_every_n_steps = 100\nsample_prompts = "{tmp_path / "p.yaml"}"\n', tmp_path)
    assert result.status is Status.FAIL and "UnboundLocalError" in result.summary
    result = output(tree, base + f'sample_every_n_epochs = 1\nsample_prompts = "{tmp_path / "p.txt"}"\n', tmp_path)
    assert result.status is Status.WARN and "No prompt file" in result.summary
    (tmp_path / "p.txt").write_text("a photo of sks\n")
    assert output(tree, base + f'sample_at_first = true\nsample_prompts = "{tmp_path / "p.txt"}"\n',
                  tmp_path).status is Status.OK


def test_a_windows_path_in_a_double_quoted_string_is_caught(tree: Path, tmp_path: Path) -> None:
    toml = GOOD.replace('output_dir = "out"', 'output_dir = "C:\\tmp\\new"')
    result = output(tree, toml, tmp_path)
    assert result.status is Status.FAIL
    assert "contains a TAB, a newline" in result.summary and "single quotes" in result.summary
    toml = GOOD.replace('"out"', f'"{tmp_path / "out"}"')
    toml += 'sample_at_first = true\nsample_prompts = "C:\\tmp\\b.txt"\n'
    result = output(tree, toml, tmp_path)
    assert result.status is Status.FAIL and "contains a TAB" in result.summary


LORA_GUI = '''
def train_model(epoch, noise_offset_type, flip_aug):
    config_toml_data = {
        "epoch": int(epoch),
        "flip_aug": flip_aug,
        "noise_offset_type": noise_offset_type,
        "zero_stage": 5,
    }
    config_toml_data = {k: v for k, v in config_toml_data.items() if v not in ["", False, None]}
'''


def test_keys_the_kohya_gui_writes_for_itself_are_noted_not_failed(tmp_path: Path) -> None:
    """In a kohya_ss checkout, the keys its GUI writes into every training TOML (read from kohya_gui/*.py)
    are not options of sd-scripts but are not the person's mistake either."""
    root = tmp_path / "kohya_ss"
    write_tree(root / "sd-scripts", TREE)
    write_tree(root, {"kohya_gui/__init__.py": "", "kohya_gui/lora_gui.py": LORA_GUI})
    toml = GOOD + 'epoch = 10\nnoise_offset_type = "Original"\n'
    result = run(root, toml, workdir=tmp_path)
    assert result.status is Status.OK, joined(result)
    assert "written by the kohya_ss GUI for its own use, ignored by sd-scripts: epoch, noise_offset_type" \
        in result.details
    result = run(root, toml + "epochs = 3\n", workdir=tmp_path)
    assert result.status is Status.FAIL and "1 unknown" in result.summary
    bare = run(root / "sd-scripts", toml, workdir=tmp_path)
    assert bare.status is Status.FAIL and "2 unknown" in bare.summary


def test_values_outside_the_choices_that_the_kohya_gui_writes_warn(tmp_path: Path) -> None:
    root = tmp_path / "kohya_ss"
    write_tree(root / "sd-scripts", TREE)
    write_tree(root, {"kohya_gui/__init__.py": "", "kohya_gui/lora_gui.py": LORA_GUI})
    result = run(root, GOOD + "zero_stage = 5\n", workdir=tmp_path)
    assert result.status is Status.WARN and "the kohya_ss GUI writes this key itself" in joined(result)
    result = run(root, GOOD + 'zero_stage = 5\nflip_aug = "false"\n', workdir=tmp_path)
    assert result.status is Status.FAIL and "1 with a bad value" in result.summary
    assert run(root / "sd-scripts", GOOD + "zero_stage = 5\n", workdir=tmp_path).status is Status.FAIL
