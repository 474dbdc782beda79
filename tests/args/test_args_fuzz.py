"""Arbitrary training TOML documents, dataset configs and command lines: the args checks always return a result
(ok, warn, fail or skip), never crash."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorasetup.checks import by_id
from lorasetup.engine.result import Status
from lorasetup.engine.target import Target, tomllib
from lorasetup.engine.tomledit import toml_value
from lorasetup.sd.argspec import extract
from tests.support.args_tree import TREE
from tests.support.checks import run_checks
from tests.support.git import write_tree

SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py", "fine_tune.py")
ROOT_HOLDER: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    root = write_tree(tmp_path_factory.mktemp("fuzz") / "sd-scripts", TREE)
    (root / "work").mkdir()
    ROOT_HOLDER["root"] = root
    yield root
    mp.undo()




def _option_names() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp), TREE)
        return sorted({dest for script in SCRIPTS for dest in extract(root, script).options})


OPTION_NAMES = _option_names()
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
keys = st.one_of(st.sampled_from(OPTION_NAMES), text.filter(bool))
scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.integers(-3, 300), st.floats(), text,
                    st.sampled_from(["512,512", "512x512", "fp16", "fp32", "networks.lora", "a=b", "a", "a=b=c",
                                     "true", "x.yaml", "Prodigy", "DAdaptAdam", "tensorboard", "all"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=6)
# the keys the rules read, so that most documents combine several of them
RULE_KEYS = ["cache_latents", "cache_latents_to_disk", "color_aug", "random_crop", "cache_text_encoder_outputs",
             "shuffle_caption", "caption_dropout_rate", "token_warmup_step", "mixed_precision", "full_fp16",
             "full_bf16", "fp8_base", "adaptive_noise_scale", "noise_offset", "network_args", "optimizer_args",
             "lr_scheduler_args", "bucket_reso_steps", "resolution", "enable_bucket", "min_bucket_reso",
             "max_bucket_reso", "network_module", "network_dim", "network_alpha", "optimizer_type", "learning_rate",
             "unet_lr", "text_encoder_lr", "output_dir", "max_train_steps", "max_train_epochs", "save_every_n_steps",
             "save_every_n_epochs", "save_last_n_steps", "save_last_n_epochs", "save_state", "save_n_epoch_ratio",
             "log_with", "logging_dir", "sample_prompts", "sample_every_n_steps", "save_precision", "use_8bit_adam",
             "fused_backward_pass", "gradient_accumulation_steps", "network_train_unet_only", "v2"]
plain = st.one_of(st.booleans(), st.integers(-3, 300), st.floats(-2, 2), text,
                  st.sampled_from(["512,512", "512", "fp16", "no", "networks.lora", "a=b", "a", "prodigy", "all"]))
rule_values = st.one_of(plain, st.lists(plain, max_size=3))
documents = st.builds(lambda rules, rest: {**rest, **rules},
                      st.dictionaries(st.sampled_from(RULE_KEYS), rule_values, min_size=8, max_size=40),
                      st.dictionaries(keys, st.one_of(values, st.dictionaries(keys, values, max_size=6)), max_size=6))


def to_toml(doc: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


flags = st.lists(st.one_of(st.sampled_from(OPTION_NAMES).map(lambda n: "--" + n), text), max_size=6)
datasets = st.one_of(st.none(), st.fixed_dictionaries({
    "general": st.dictionaries(keys, values, max_size=4),
    "datasets": st.lists(st.fixed_dictionaries({"subsets": st.lists(st.dictionaries(keys, values, max_size=4),
                                                                    max_size=3)}), max_size=2),
}), documents)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, extra=flags, dataset=datasets, script=st.sampled_from(SCRIPTS),
       raw=st.integers(0, 19).map(lambda n: n == 0))  # now and then a document that is not TOML at all
def test_args_checks_return_results_for_any_input(doc: dict[str, Any], extra: list[str], dataset: Any,
                                                  script: str, raw: bool) -> None:
    root = ROOT_HOLDER["root"]
    config = root / "work" / "config.toml"
    config.write_text(to_toml(doc) if not raw else "".join(map(str, doc)) + "\n= [")
    dataset_path = None
    if dataset is not None:
        dataset_path = root / "work" / "dataset.json"
        dataset_path.write_text(json.dumps(dataset))
    target = Target(kohya_root=root, python=Path(sys.executable), script=script, train_config=config,
                    train_args=extra, dataset_config=dataset_path)
    results = run_checks(target, registry=[by_id()[i] for i in ("args.known", "args.rules", "args.output")])
    for check_id, result in results.items():
        assert result.status is not Status.ERROR, (check_id, result.summary, result.traceback)
        assert result.summary


def test_the_generator_writes_valid_toml() -> None:
    """Guard for the test itself: generated documents parse, so the checks see real values, not errors."""
    doc = {"a": [1.5, float("inf"), "x\x7f\n"], "s": {"k": {"n": True}, "m": float("nan")}}
    parsed = tomllib.loads(to_toml(doc))
    assert parsed["a"][0] == 1.5 and parsed["a"][2] == "x\x7f\n" and parsed["s"]["k"] == {"n": True}
