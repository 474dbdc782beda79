"""The device gate's file handling: accelerate config writing and backups, training-TOML edits, and which
mixed precision sd-scripts really uses. Real files in a temporary folder; the written accelerate config is
read back by this venv's real accelerate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorasetup.engine.result import FixError
from lorasetup.engine.target import tomllib
from lorasetup.sd import accelconfig, argfix
from lorasetup.sd.argfix import ArgChange
from lorasetup.sd.trainargs import load_train_args


def test_written_config_is_what_accelerate_reads_back(tmp_path: Path):
    path = tmp_path / "accelerate" / "default_config.yaml"
    assert accelconfig.write_config(path, accelconfig.machine_config("mps"), None) is None
    assert path.read_text() == accelconfig.render(accelconfig.machine_config("mps"))
    code = ("import json, sys; from accelerate.commands.config import load_config_from_file as load; "
            "c = load(sys.argv[1]); "
            "print(json.dumps([c.use_cpu, c.num_processes, c.distributed_type.value, c.mixed_precision]))")
    read = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert json.loads(read.stdout) == [False, 1, "NO", "no"]


def test_machine_config_per_device():
    assert accelconfig.machine_config("cpu")["use_cpu"] is True
    assert accelconfig.machine_config("cuda") == {**accelconfig.machine_config("mps")}
    two = accelconfig.machine_config("cuda", num_gpus=2)
    assert (two["distributed_type"], two["num_processes"], two["use_cpu"]) == ("MULTI_GPU", 2, False)


def test_rewrite_backs_up_and_never_overwrites_an_older_backup(tmp_path: Path):
    path = tmp_path / "default_config.yaml"
    path.write_text("use_cpu: true\n")
    first = accelconfig.write_config(path, accelconfig.machine_config("mps"), path.read_bytes())
    second = accelconfig.write_config(path, accelconfig.machine_config("cpu"), path.read_bytes())
    assert first is not None and second is not None and first != second
    assert first.read_text() == "use_cpu: true\n"
    assert json.loads(second.read_text())["use_cpu"] is False
    assert json.loads(path.read_text())["use_cpu"] is True


def test_write_refuses_a_file_that_appeared_after_the_check(tmp_path: Path):
    path = tmp_path / "default_config.yaml"
    path.write_text("mine: 1\n")
    with pytest.raises(FixError, match="changed since the check read it"):
        accelconfig.write_config(path, accelconfig.machine_config("mps"), None)
    assert path.read_text() == "mine: 1\n"


def edit(tmp_path: Path, text: str, changes: list[ArgChange], extra: list[str] | None = None) -> Path:
    toml = tmp_path / "train.toml"
    toml.write_text(text)
    fix, why = argfix.plan(load_train_args(toml, extra or []), changes).fix("edit", safe=False)
    assert fix is not None, why
    fix.apply()
    return toml


def test_toml_edit_keeps_everything_else_and_adds_missing_keys_in_the_same_section(tmp_path: Path):
    text = ('# my settings\n[model_arguments]\nv2 = false\n\n[optimizer_arguments]\n'
            'optimizer_type = "AdamW8bit"  # fast\nxformers = true\n\n[saving_arguments]\n'
            "save_every_n_epochs = 1")
    toml = edit(tmp_path, text, [ArgChange("optimizer_type", "AdamW"), ArgChange("xformers", False),
                                 ArgChange("sdpa", True, near="xformers")])
    assert toml.read_text() == ('# my settings\n[model_arguments]\nv2 = false\n\n[optimizer_arguments]\n'
                                'optimizer_type = "AdamW"  # fast\nxformers = false\nsdpa = true\n\n'
                                '[saving_arguments]\nsave_every_n_epochs = 1')
    assert tomllib.loads(toml.read_text())["optimizer_arguments"]["sdpa"] is True


def test_toml_edit_appends_when_no_key_is_present(tmp_path: Path):
    toml = edit(tmp_path, 'mixed_precision = "fp16"', [ArgChange("no_half_vae", True)])
    assert toml.read_text() == 'mixed_precision = "fp16"\nno_half_vae = true\n'


def test_train_config_edit_refuses_a_changed_file_and_keeps_a_backup(tmp_path: Path):
    toml = tmp_path / "train.toml"
    toml.write_text('[a]\nmixed_precision = "bf16"\n')
    fix, _ = argfix.plan(load_train_args(toml, []), [ArgChange("mixed_precision", "no")]).fix("edit")
    assert fix is not None
    toml.write_text('[a]\nmixed_precision = "fp16"\n')
    with pytest.raises(FixError, match="changed since the check read it"):
        fix.apply()
    assert toml.read_text() == '[a]\nmixed_precision = "fp16"\n'
    assert not list(tmp_path.glob("*.bak-*"))
    edit(tmp_path, toml.read_text(), [ArgChange("mixed_precision", "no")])
    assert toml.read_text() == '[a]\nmixed_precision = "no"\n'
    assert [b.read_text() for b in tmp_path.glob("*.bak-*")] == ['[a]\nmixed_precision = "fp16"\n']


def test_a_quoted_key_is_edited_in_place(tmp_path: Path):
    assert edit(tmp_path, '"xformers" = true # keep\n', [ArgChange("xformers", False)]).read_text() == \
        '"xformers" = false # keep\n'


@pytest.mark.parametrize("toml_text, extra, expected", [
    ("", [], ("no", "sd-scripts' default (--mixed_precision not set)")),
    ('[training]\nmixed_precision = "fp16"\n', [], ("fp16", "t.toml [training] mixed_precision")),
    ('[training]\nmixed_precision = "fp16"\n', ["--mixed_precision", "bf16"], ("bf16", "--mixed_precision")),
])
def test_effective_precision_is_sd_scripts_own_command_line_over_toml(tmp_path, toml_text, extra, expected):
    toml = tmp_path / "t.toml"
    toml.write_text(toml_text)
    assert accelconfig.effective_mixed_precision(load_train_args(toml, extra)) == expected
