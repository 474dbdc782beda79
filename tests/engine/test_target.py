"""Target loading: discovery < lorasetup.toml / [tool.lorasetup] < LORASETUP_* < flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorasetup.engine.target import SETTINGS, ConfigError, load_target


def kohya_tree(root: Path, venv: bool = False) -> Path:
    (root / "kohya_gui.py").parent.mkdir(parents=True, exist_ok=True)
    (root / "kohya_gui.py").write_text("")
    (root / "sd-scripts").mkdir()
    if venv:
        (root / "venv" / "bin").mkdir(parents=True)
        (root / "venv" / "bin" / "python").write_text("")
    return root


def test_discovery_in_kohya_ss_subfolder_and_its_venv(tmp_path):
    root = kohya_tree(tmp_path / "work" / "kohya_ss", venv=True)
    target = load_target(cwd=tmp_path / "work", environ={})
    assert target.kohya_root == root
    assert target.python == root / "venv" / "bin" / "python"
    assert target.sources == {"kohya_root": "discovered", "python": "discovered"}


def test_without_venv_the_current_interpreter_is_used(tmp_path):
    kohya_tree(tmp_path / "kohya_ss")
    target = load_target(cwd=tmp_path, environ={})
    assert target.python == Path(sys.executable)
    assert target.sources["python"] == "current interpreter"


def test_priority_config_then_env_then_flags(tmp_path):
    (tmp_path / "lorasetup.toml").write_text(
        'kohya_root = "ks"\nscript = "sdxl_train_network.py"\ndevice = "mps"\ntrain_args = "--a 1"\n'
        '[smoke]\nsteps = 3\ntimeout = 60\n')
    env = {"LORASETUP_DEVICE": "cuda", "LORASETUP_SCRIPT": "train_db.py"}
    target = load_target({"script": "train_network.py"}, cwd=tmp_path, environ=env)
    assert target.kohya_root == tmp_path / "ks"  # relative to the config file
    assert (target.device, target.script, target.train_args) == ("cuda", "train_network.py", ["--a", "1"])
    assert (target.smoke_steps, target.smoke_timeout) == (3, 60.0)
    assert target.sources["device"] == "LORASETUP_DEVICE" and target.sources["script"] == "flag"


def test_pyproject_section_found_from_a_subfolder(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.lorasetup]\ndataset_config = "data/ds.toml"\n')
    (tmp_path / "sub").mkdir()
    target = load_target(cwd=tmp_path / "sub", environ={})
    assert target.dataset_config == tmp_path / "data" / "ds.toml"


@pytest.mark.parametrize("text, message", [
    ('dataset_confg = "x"\n', "unknown key `dataset_confg`. Did you mean `dataset_config`?"),
    ('[smoke]\nstep = 3\n', "unknown key `smoke.step`. Did you mean `smoke.steps`?"),
    ('device = "gpu"\n', "must be one of"),
    ('[smoke]\nsteps = 0\n', "must be at least 1"),
    ('kohya_root = \n', "not valid TOML"),
])
def test_config_errors_name_the_file_and_the_fix(tmp_path, text, message):
    (tmp_path / "lorasetup.toml").write_text(text)
    with pytest.raises(ConfigError, match="lorasetup.toml") as info:
        load_target(cwd=tmp_path, environ={})
    assert message in str(info.value)


def test_explicit_config_missing(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_target(cwd=tmp_path, environ={}, config=Path("nope.toml"))


SAMPLES = {"kohya_root": "ks", "python": "py/bin/python", "script": "sdxl_train_network.py",
           "dataset_config": "ds.toml", "train_config": "train.toml", "train_args": "--a 1",
           "base_model": "m.safetensors", "output_dir": "out", "device": "cpu", "accelerate_config": "acc.yaml",
           "launch_args": "--num_processes 1", "rendezvous_timeout": "30", "deps_accept": "accelerate>=1.11",
           "smoke_steps": "3", "smoke_timeout": "60"}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_reaches_its_field_from_each_source(tmp_path, setting):
    """The one table drives the config keys, the environment and the flags: each spelling sets the field."""
    raw = SAMPLES[setting.name]
    key = f"[{setting.table}]\n{setting.table_key}" if setting.table else setting.name
    (tmp_path / "lorasetup.toml").write_text(f'{key} = "{raw}"\n')
    from_file = load_target(cwd=tmp_path, environ={})
    (tmp_path / "lorasetup.toml").unlink()
    from_env = load_target(cwd=tmp_path, environ={setting.env: raw})
    from_flag = load_target({setting.name: raw}, cwd=tmp_path, environ={})
    value = getattr(from_flag, setting.name)
    assert value not in (None, "", [])
    assert getattr(from_file, setting.name) == getattr(from_env, setting.name) == value
    assert (from_file.sources[setting.name], from_env.sources[setting.name]) == (
        str(tmp_path / "lorasetup.toml"), setting.env)


def test_cli_and_pytest_options_come_from_the_table():
    from lorasetup.cli import build_parser
    from lorasetup.pytest_plugin import OPTIONS
    doctor = build_parser()._subparsers._group_actions[0].choices["doctor"]  # type: ignore[union-attr]
    flags = {opt for action in doctor._actions for opt in action.option_strings}
    assert {s.flag for s in SETTINGS if s.cli} <= flags
    assert "--train-args" not in flags  # sd-scripts arguments go after `--`
    assert [s.name for s in OPTIONS] == [s.name for s in SETTINGS if s.name not in ("smoke_timeout", "deps_accept")]
