"""The smoke command is the real command with only the smoke overrides; the failure catalog."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorasetup.checks.smoke.checks import smoke_pytest_timeout
from lorasetup.engine.target import Target, tomllib
from lorasetup.sd.run.command import (
    SMOKE_DROPPED,
    config_without,
    launcher,
    real_command,
    smoke_plan,
    strip_options,
    toml_key,
    toml_value,
)
from lorasetup.sd.run.failures import explain

GUI_CONFIG = '''
# written by the kohya_ss GUI
pretrained_model_name_or_path = "/models/sd15.safetensors"
max_train_epochs = 10
save_every_n_epochs = 1
output_dir = "/home/me/loras"
output_name = "mychar"
sample_every_n_steps = 100
sample_prompts = "/home/me/prompts.txt"
network_args = ["conv_dim=4", "conv_alpha=1"]
learning_rate = 0.0001
caption = "a \\"quoted\\" path C:\\\\data\\ttab ünïcode"

[extra]
huggingface_repo_id = "me/mychar"
nested = { a = 1, b = [1.5, "x"] }
logging_dir = "/home/me/logs"
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "sd-scripts").mkdir()
    return tmp_path / "sd-scripts"


def test_overrides_replace_the_persons_outputs_steps_and_periodic_saves(tree, tmp_path):
    config = tmp_path / "config_lora.toml"
    config.write_text(GUI_CONFIG)
    target = Target(kohya_root=tree, python=Path(sys.executable), train_config=config,
                    train_args=["--save_every_n_steps", "50", "--network_dim=8", "--sample_at_first",
                                "--max_train_steps=920", "--noise_offset", "-0.05"])
    temp = tmp_path / "temp"
    temp.mkdir()
    plan = smoke_plan(target, config, logging=True, temp=temp, steps=5)
    prefix = len(launcher(target)) + 1
    assert plan.argv[:prefix] == plan.real[:prefix] == [*launcher(target), str(tree / "train_network.py")]
    copy = plan.config_copy
    assert plan.argv[prefix:] == ["--config_file", str(copy), "--network_dim=8", "--noise_offset", "-0.05",
                                  "--max_train_steps=5", f"--output_dir={temp / 'output'}",
                                  "--output_name=lorasetup-smoke", "--save_model_as=safetensors",
                                  f"--logging_dir={temp / 'logs'}"]
    assert plan.real[prefix:] == ["--config_file", str(config), *target.train_args]
    original = tomllib.loads(GUI_CONFIG)
    smoked = tomllib.loads(copy.read_text())
    assert smoked == {"pretrained_model_name_or_path": "/models/sd15.safetensors", "sample_prompts":
                      "/home/me/prompts.txt", "network_args": ["conv_dim=4", "conv_alpha=1"],
                      "learning_rate": 0.0001, "caption": original["caption"],
                      "extra": {"nested": {"a": 1, "b": [1.5, "x"]}}}
    assert set(plan.dropped) == {"max_train_epochs", "save_every_n_epochs", "output_dir", "output_name",
                                 "sample_every_n_steps", "huggingface_repo_id", "logging_dir", "max_train_steps",
                                 "save_every_n_steps", "sample_at_first"}


def test_config_without_dropped_keys_is_used_as_is(tree, tmp_path):
    config = tmp_path / "plain.toml"
    config.write_text('learning_rate = 1e-4\nnetwork_dim = 4\n')
    plan = smoke_plan(Target(kohya_root=tree, train_config=config), config, False, tmp_path, 3)
    assert plan.config_copy is None and ["--config_file", str(config)] == plan.argv[-6:-4]


def test_target_files_and_accelerate_config_go_on_the_command_line(tree, tmp_path):
    target = Target(kohya_root=tree, python=Path(sys.executable), dataset_config=tmp_path / "d.toml",
                    base_model=tmp_path / "m.safetensors", output_dir=tmp_path / "out",
                    accelerate_config=tmp_path / "acc.yaml", script="sdxl_train_network.py")
    argv = real_command(target)
    assert launcher(target) == [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                                str(tmp_path / "acc.yaml")]
    assert argv[len(launcher(target)):] == [str(tree / "sdxl_train_network.py"),
        "--dataset_config", str(tmp_path / "d.toml"), "--pretrained_model_name_or_path",
        str(tmp_path / "m.safetensors"), "--output_dir", str(tmp_path / "out")]


def test_strip_options_keeps_values_that_look_negative():
    assert strip_options(["--a", "1", "--save_every_n_epochs", "2", "--b=-3", "--network_args", "x=1", "y=2",
                          "--sample-every-n-steps=4", "--flag"], SMOKE_DROPPED) == \
        ["--a", "1", "--b=-3", "--network_args", "x=1", "y=2", "--flag"]


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                       st.one_of(st.text(max_size=20), st.integers(-10**6, 10**6), st.booleans(),
                                 st.floats(allow_nan=False), st.lists(st.integers(-5, 5), max_size=3)),
                       max_size=8))
def test_config_copy_round_trips_every_kept_value(tmp_path_factory, table):
    folder = tmp_path_factory.mktemp("rt")
    config = folder / "c.toml"
    config.write_text("max_train_epochs = 3\n[section]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n"
                                                                     for k, v in table.items()))
    copy = config_without(config, {"max_train_epochs"}, folder / "copy.toml")
    assert tomllib.loads(copy.read_text()) == {"section": table}


def test_pytest_timeout_follows_the_targets_smoke_timeout():
    assert smoke_pytest_timeout(Target(smoke_timeout=30)) == 150.0


@pytest.mark.parametrize("line, mode", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "G2"),
    ("safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge", "E2"),
    ("OSError: Can't load tokenizer for 'openai/clip-vit-large-patch14'.", "E3"),
    ("ModuleNotFoundError: No module named 'library'", "A2"),
    ("ModuleNotFoundError: No module named 'imagesize'", "imports"),
    ("RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel: Missing key(s) in state_dict", "E1"),
    ("ValueError: fp16 mixed precision requires a GPU (not 'mps').", "C3"),
    ("train_network.py: error: unrecognized arguments: --foo", "A3"),
    ("subprocess.CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>.", "G3"),
    ("AttributeError: 'int' object has no attribute 'split'", "resolution"),
])
def test_error_lines_match_the_failure_catalog(line, mode):
    assert explain(line, []).id == mode


def test_unknown_error_line_falls_back_to_the_output_tail():
    assert explain("RuntimeError: something new", ["OSError: [Errno 28] No space left on device"]).id == "G4"
    assert explain("RuntimeError: something new", ["all fine"]) is None
