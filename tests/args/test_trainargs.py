"""The one model of the training arguments equals sd-scripts' namespace.

The parser below mirrors sd-scripts' own add_argument calls (library/train_util.py, train_network.py,
library/config_util.py) for every kind of option: store_true flags, int/float/str/Path types, nargs lists,
choices, string defaults that argparse converts. `READ_CONFIG` is library/train_util.py read_config_from_file as
sd-scripts 48d368fa has it (minus logging and --output_config), run by the real argparse in a child process. The
model is built from the same tree's source by lorasetup.sd.argspec, so both sides read the same add_argument calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lorasetup.sd.argspec import extract
from lorasetup.sd.trainargs import ArgsOrigin, TrainArgsError, load_train_args, scan_cli

TRAIN_UTIL = '''
import argparse
import os
from pathlib import Path

import tomllib


def add_sd_models_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--v2", action="store_true")
    parser.add_argument("--v_parameterization", action="store_true")
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None)


def add_training_arguments(parser: argparse.ArgumentParser, support_dreambooth: bool):
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--save_precision", type=str, default=None, choices=[None, "float", "fp16", "bf16"])
    parser.add_argument("--max_train_steps", type=int, default=1600)
    parser.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--xformers", action="store_true")
    parser.add_argument("--sdpa", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--noise_offset", type=float, default=None)
    parser.add_argument("--min_snr_gamma", type=float, default="5.0")
    parser.add_argument("--caption_extension", type=str, default=".caption")
    parser.add_argument("--resolution", type=str, default=None)
    parser.add_argument("--config_file", type=str, default=None)
    parser.add_argument("--output_config", action="store_true")


def add_optimizer_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--optimizer_type", type=str, default="")
    parser.add_argument("--learning_rate", type=float, default=2.0e-6)
    parser.add_argument("--optimizer_args", type=str, default=None, nargs="*")


def read_config_from_file(args: argparse.Namespace, parser: argparse.ArgumentParser):
    if not args.config_file:
        return args

    config_path = args.config_file + ".toml" if not args.config_file.endswith(".toml") else args.config_file

    if not os.path.exists(config_path):
        exit(1)

    with open(config_path, "rb") as f:
        config_dict = tomllib.load(f)

    # combine all sections into one
    ignore_nesting_dict = {}
    for section_name, section_dict in config_dict.items():
        # if value is not dict, save key and value as is
        if not isinstance(section_dict, dict):
            ignore_nesting_dict[section_name] = section_dict
            continue

        # if value is dict, save all key and value into one dict
        for key, value in section_dict.items():
            ignore_nesting_dict[key] = value

    config_args = argparse.Namespace(**ignore_nesting_dict)
    args = parser.parse_args(namespace=config_args)
    args.config_file = os.path.splitext(args.config_file)[0]
    return args
'''

CONFIG_UTIL = '''
import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--dataset_config", type=Path, default=None)
'''

TRAIN_NETWORK = '''
import argparse

import library.train_util as train_util
from library import config_util


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train_util.add_sd_models_arguments(parser)
    train_util.add_training_arguments(parser, True)
    train_util.add_optimizer_arguments(parser)
    config_util.add_config_arguments(parser)
    parser.add_argument("--no_half_vae", action="store_true")
    parser.add_argument("--network_dim", type=int, default=None)
    parser.add_argument("--network_alpha", type=float, default=1)
    parser.add_argument("--network_args", type=str, default=None, nargs="*")
    parser.add_argument("--text_encoder_lr", type=float, default=None, nargs="*")
    return parser


if __name__ == "__main__":
    parser = setup_parser()
    args = parser.parse_args()
    args = train_util.read_config_from_file(args, parser)
'''

# What the child prints: sd-scripts' namespace for each (TOML, command line) row.
NAMESPACES = '''
import json, sys
from pathlib import Path
import train_network
from library import train_util

out = []
for toml_path, cli in json.loads(sys.argv[1]):
    argv = (["--config_file", toml_path] if toml_path else []) + cli
    sys.argv = ["train_network.py", *argv]  # read_config_from_file parses sys.argv again
    parser = train_network.setup_parser()
    args = parser.parse_args()
    args = train_util.read_config_from_file(args, parser)
    out.append({k: ({"path": str(v)} if isinstance(v, Path) else v) for k, v in vars(args).items()})
print(json.dumps(out))
'''

TREE = {"library/__init__.py": "", "library/train_util.py": TRAIN_UTIL, "library/config_util.py": CONFIG_UTIL,
        "train_network.py": TRAIN_NETWORK}

# (name, training TOML or None, command line after the script)
ROWS: list[tuple[str, str | None, list[str]]] = [
    ("v2 string false", 'v2 = "false"', []),
    ("xformers string false", '[attention]\nxformers = "false"', []),
    ("v2 string no", 'v2 = "no"', []),
    ("v2 empty string", 'v2 = ""', []),
    ("v2 false", "v2 = false", []),
    ("v2 true", "v2 = true", []),
    ("v2 zero", "v2 = 0", []),
    ("v2 one", "v2 = 1", []),
    ("flag on the command line", None, ["--v2"]),
    ("command line beats the TOML", "v2 = false\nxformers = false", ["--v2", "--xformers"]),
    ("abbreviated flag", None, ["--no_half", "--network_d", "8"]),
    ("int from the command line", None, ["--network_dim", "16"]),
    ("int inline", None, ["--network_dim=16", "--seed=-1"]),
    ("int as a TOML string", 'network_dim = "16"', []),
    ("int as a TOML float", "network_dim = 16.0", []),
    ("float from the command line", None, ["--learning_rate", "1e-4", "--network_alpha=8"]),
    ("float default and string default", None, []),
    ("float as a TOML string", 'learning_rate = "1e-4"', []),
    ("list in the TOML", 'optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]', []),
    ("list on the command line", None, ["--optimizer_args", "weight_decay=0.01", "betas=0.9,0.99"]),
    ("empty list on the command line", None, ["--optimizer_args"]),
    ("list written as one string", 'network_args = "conv_dim=4 conv_alpha=1"', []),
    ("list of floats", None, ["--text_encoder_lr", "1e-5", "2e-5"]),
    ("string choices from the command line", None, ["--mixed_precision", "fp16", "--save_precision=bf16"]),
    ("string outside the choices in the TOML", 'mixed_precision = "FP16"', []),
    ("sections flattened, later wins", '[a]\nv2 = true\nnetwork_dim = 4\n[b]\nv2 = false\nnetwork_dim = 8', []),
    ("top level after a section wins", "[a]\nnetwork_dim = 4\n\n[b]\nseed = 1", ["--max_train_steps", "5"]),
    ("path type", 'dataset_config = "d.toml"', []),
    ("path type on the command line", None, ["--dataset_config", "d.toml"]),
    ("unknown TOML keys are in the namespace too", "netwrok_dim = 8\nnum_repeat = 3", []),
    ("empty string option", 'optimizer_type = ""\ncaption_extension = ".txt"', []),
    ("resolution as an int", "resolution = 512", ["--network_dim", "4"]),
]


def write_tree(root: Path) -> Path:
    for rel, text in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("sd-scripts"))


@pytest.fixture(scope="module")
def namespaces(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """sd-scripts' namespace for every row, from the real argparse over the TOML namespace (one child)."""
    work = tmp_path_factory.mktemp("configs")
    rows = []
    for i, (_, toml, cli) in enumerate(ROWS):
        path = ""
        if toml is not None:
            path = str(work / f"row{i}.toml")
            Path(path).write_text(toml + "\n")
        rows.append((path, cli))
    proc = subprocess.run([sys.executable, "-c", NAMESPACES, json.dumps(rows)], cwd=tree, capture_output=True,
                          text=True, check=True)
    return {name: ns for (name, _, _), ns in zip(ROWS, json.loads(proc.stdout))}


def model_of(tree: Path, tmp_path: Path, toml: str | None, cli: list[str]) -> Any:
    config = None
    if toml is not None:
        config = tmp_path / "config.toml"
        config.write_text(toml + "\n")
    return load_train_args(config, cli, extract(tree, "train_network.py"))


def plain(value: Any) -> Any:
    return {"path": str(value)} if isinstance(value, Path) else value


@pytest.mark.parametrize("name, toml, cli", ROWS, ids=[r[0] for r in ROWS])
def test_the_model_is_sd_scripts_namespace(tree: Path, tmp_path: Path, namespaces: dict[str, dict[str, Any]],
                                           name: str, toml: str | None, cli: list[str]) -> None:
    """Every value (defaults included), and every truth test `if args.x:`, equal argparse's over the TOML."""
    expected = {k: v for k, v in namespaces[name].items() if k != "config_file"}
    model = model_of(tree, tmp_path, toml, cli)
    got = {k: plain(s.value) for k, s in model.values.items() if k != "config_file"}
    assert got == expected
    for dest, value in expected.items():
        assert model.on(dest) is bool(value), dest


@pytest.mark.parametrize("toml, cli, on", [
    ('v2 = "false"', [], True), ('xformers = "false"', [], True), ('v2 = "no"', [], True), ('v2 = ""', [], False),
    ("v2 = false", [], False), ("v2 = 0", [], False), (None, ["--v2"], True), ("v2 = false", ["--v2"], True),
])
def test_truthiness_is_sd_scripts_if_args_x(tree: Path, tmp_path: Path, toml: str | None, cli: list[str],
                                            on: bool) -> None:
    model = model_of(tree, tmp_path, toml, cli)
    name = "xformers" if "xformers" in (toml or "") else "v2"
    assert model.on(name) is on


def test_places_and_sources(tree: Path, tmp_path: Path) -> None:
    model = model_of(tree, tmp_path, '[model]\nv2 = "false"\n[optim]\nlearning_rate = 1e-4\n',
                     ["--network_dim=16", "--xformers"])
    assert model.place("v2") == "config.toml [model] v2" and model.setting("v2").source == "toml"
    assert (model.get("network_dim"), model.place("network_dim")) == (16, "--network_dim")
    assert model.place("max_train_steps") == "max_train_steps (default)" and not model.given("max_train_steps")
    assert "xformers" in model and "seed" not in model


def test_without_the_script_the_command_line_stays_text(tmp_path: Path) -> None:
    """No checkout to read the options from: no defaults, raw strings, and a bare flag is on."""
    model = load_train_args(None, ["--a=1", "--b", "2", "--flag", "--network_args", "x=1", "y=2"])
    assert {k: s.value for k, s in model.values.items()} == {"a": "1", "b": "2", "flag": True,
                                                             "network_args": ["x=1", "y=2"]}


def test_config_file_from_the_arguments_and_missing_suffix(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text("max_train_steps = 920\n")
    args = load_train_args(None, ["--config_file", str(tmp_path / "cfg")])
    assert args.get("max_train_steps") == 920 and args.config_file == tmp_path / "cfg.toml"
    assert load_train_args(None, ["--config_file", ""]).config_file is None  # sd-scripts: `if not args.config_file`


def test_flags_know_which_tokens_came_from_lorasetup_toml(tmp_path: Path) -> None:
    origin = ArgsOrigin("lorasetup.toml train_args", ("--v2", "--network_dim", "8"), tmp_path / "lorasetup.toml")
    rest = ArgsOrigin("the command line (after --)", ("--xformers",))
    flags, stray = scan_cli(["--v2", "--network_dim", "8", "--xformers"], [origin, rest])
    assert [(f.place, f.index, f.origin is origin) for f in flags] == [
        ("lorasetup.toml train_args --v2", 0, True), ("lorasetup.toml train_args --network_dim", 1, True),
        ("--xformers", 3, False)]
    assert not stray


@pytest.mark.parametrize("text, message", [(None, "training config not found"), ("a = [", "not valid TOML")])
def test_bad_config_file_is_bad_input(tmp_path: Path, text: str | None, message: str) -> None:
    cfg = tmp_path / "train.toml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(TrainArgsError, match=message) as info:
        load_train_args(cfg, [])
    assert str(cfg) in info.value.summary and info.value.hint
