"""Training arguments as sd-scripts sees them: --config_file TOML flattened one level, command line wins."""

from __future__ import annotations

import pytest

from lorasetup.sd.trainargs import TrainArgsError, load_train_args, parse_cli


def test_parse_cli_forms():
    assert parse_cli(["--a=1", "--b", "2", "--flag", "--network_args", "x=1", "y=2", "--network-dim", "8"]) == {
        "a": "1", "b": "2", "flag": True, "network_args": ["x=1", "y=2"], "network-dim": "8"}


def test_config_file_sections_flattened_and_cli_wins(tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n[optim]\nlearning_rate = 1e-4\n'
                   'network_dim = 32\n')
    args = load_train_args(cfg, ["--network_dim=16", "--xformers"])
    assert args.get("pretrained_model_name_or_path") == "m.safetensors"
    assert args.place("learning_rate") == "train.toml [optim] learning_rate"
    assert (args.get("network_dim"), args.place("network_dim")) == ("16", "--network_dim")
    assert args.flag("xformers") and not args.flag("cache_latents")


def test_config_file_from_the_arguments_and_missing_suffix(tmp_path):
    (tmp_path / "cfg.toml").write_text("max_train_steps = 920\n")
    args = load_train_args(None, ["--config_file", str(tmp_path / "cfg")])
    assert args.get("max_train_steps") == 920 and args.config_file == tmp_path / "cfg.toml"


@pytest.mark.parametrize("text, message", [(None, "training config not found"), ("a = [", "not valid TOML")])
def test_bad_config_file_is_bad_input(tmp_path, text, message):
    cfg = tmp_path / "train.toml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(TrainArgsError, match=message) as info:
        load_train_args(cfg, [])
    assert str(cfg) in info.value.summary and info.value.hint
