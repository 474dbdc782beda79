"""Arbitrary TOML and JSON documents, arbitrary values and arbitrary training arguments fed to the five dataset
checks: each always returns a Result (ok, warn, fail or skip) and never raises or crashes (`error`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lorasetup.engine.result import Result, Status
from lorasetup.engine.target import Target
from lorasetup.engine.tomledit import toml_value
from lorasetup.sd.dataset.schema import BUILTIN_SCHEMA
from tests.support.checks import gate_checks, run_checks
from tests.support.dataset_checkout import make_checkout

KEYS = sorted({k for table in BUILTIN_SCHEMA.values() for k in table}) + [
    "general", "datasets", "subsets", "num_repeat", "learning_rate", "train_batch_size", ""]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stand-in checkout and a folder of real, broken and captioned images the documents may point at."""
    root = tmp_path_factory.mktemp("hyp")
    images = root / "10_tok"
    images.mkdir()
    for i, size in enumerate([(512, 512), (300, 900), (1024, 640)]):
        Image.new("RGB", size).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text("tok, thing\n")
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (images / "empty.png").write_bytes(b"")
    (images / "3.caption").write_bytes(b"\xff\xfe")
    return {"checkout": make_checkout(root / "sd-scripts"), "images": images, "root": root}


def toml_document(data: dict) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in data.items())


keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
scalars = st.one_of(st.booleans(), st.integers(-(2 ** 40), 2 ** 40), st.integers(-3, 20),
                    st.floats(allow_nan=True), st.text(max_size=12), st.dates(),
                    st.sampled_from(["IMAGES", ".txt", ".caption", "txt", "512,512", "~/x", "C:\\train\\x", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys, inner, max_size=3)), max_leaves=8)


def either(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a sensible value, sometimes anything at all."""
    return st.one_of(good, good, values)


subset = st.one_of(
    st.fixed_dictionaries({"image_dir": st.sampled_from(["IMAGES", "IMAGES", "missing", "C:\\img"])}, optional={
        "num_repeats": either(st.integers(-2, 5)), "is_reg": either(st.booleans()),
        "caption_extension": either(st.sampled_from([".txt", ".caption", "txt", ""])),
        "keep_tokens": either(st.integers(0, 3)), "shuffle_caption": either(st.booleans()),
        "cache_info": either(st.booleans()), "class_tokens": either(st.text(max_size=5)),
        "metadata_file": either(st.sampled_from(["IMAGES", "meta.json"])),
        "conditioning_data_dir": either(st.just("IMAGES")), "enable_wildcard": either(st.booleans()),
        "caption_prefix": either(st.text(max_size=4)), "keep_tokens_separator": either(st.sampled_from(["|", ""])),
        "token_warmup_step": either(st.floats(0, 3)), "extra": values}),
    st.dictionaries(keys, values, max_size=4))
dataset = st.fixed_dictionaries({"subsets": either(st.lists(subset, min_size=1, max_size=3))}, optional={
    "resolution": either(st.sampled_from([512, 256, 64, [512, 768], [0, 0]])),
    "batch_size": either(st.integers(-1, 5)), "enable_bucket": either(st.booleans()),
    "bucket_reso_steps": either(st.sampled_from([0, 1, 32, 64, 100])),
    "min_bucket_reso": either(st.integers(0, 1024)), "max_bucket_reso": either(st.integers(0, 2048)),
    "bucket_no_upscale": either(st.booleans()), "validation_split": either(st.floats(-1, 2)),
    "validation_seed": either(st.integers(0, 5)), "extra": values})
documents = st.fixed_dictionaries({"datasets": either(st.lists(dataset, min_size=1, max_size=2))}, optional={
    "general": st.one_of(st.dictionaries(keys, values, max_size=4), dataset, values), "extra": values})
train_args = st.lists(st.tuples(st.sampled_from(["--train_batch_size", "--resolution", "--max_train_steps",
                                                 "--max_train_epochs", "--save_every_n_steps", "--enable_bucket",
                                                 "--caption_extension", "--gradient_accumulation_steps",
                                                 "--train_data_dir", "--dataset_repeats", "--masked_loss",
                                                 "--save_n_epoch_ratio", "--in_json", "--reg_data_dir"]),
                                st.one_of(st.sampled_from(["0", "1", "2", "-1", "512", "512,768", "x", "IMAGES",
                                                           "PARENT"]), st.text(max_size=5))),
                      max_size=4)


def substitute(value: object, world: dict[str, Path]) -> object:
    """Point the placeholder strings at the real image folder (or its parent, for folder mode)."""
    if value == "IMAGES":
        return str(world["images"])
    if value == "PARENT":
        return str(world["root"])
    if isinstance(value, list):
        return [substitute(v, world) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, world) for k, v in value.items()}
    return value


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh working directory per example (relative paths in the documents resolve inside it)."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def run_all(world: dict[str, Path], config: Path | None, args: list[str]) -> list[Result]:
    results = list(run_checks(Target(kohya_root=world["checkout"], dataset_config=config, train_args=args),
                              registry=gate_checks("dataset")).values())
    assert len(results) == 5
    for r in results:
        assert isinstance(r, Result) and r.status is not Status.ERROR, (r.check_id, r.summary, r.traceback)
    return results


def flatten_args(pairs: list[tuple[str, str]], world: dict[str, Path]) -> list[str]:
    return [token for flag, value in pairs for token in (flag, str(substitute(value, world)))]


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@SETTINGS
@given(doc=documents, args=train_args)
def test_arbitrary_toml_documents(world: dict[str, Path], doc: dict, args: list[tuple[str, str]]) -> None:
    with scratch() as tmp:
        path = tmp / "dataset.toml"
        path.write_text(toml_document(substitute(doc, world)), encoding="utf-8")
        run_all(world, path, flatten_args(args, world))


@SETTINGS
@given(doc=st.one_of(documents, values, st.none()), args=train_args)
def test_arbitrary_json_documents(world: dict[str, Path], doc: object, args: list[tuple[str, str]]) -> None:
    with scratch() as tmp:
        path = tmp / "dataset.json"
        path.write_text(json.dumps(substitute(doc, world), default=str), encoding="utf-8")
        run_all(world, path, flatten_args(args, world))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=120).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text(world: dict[str, Path], text: str) -> None:
    with scratch() as tmp:
        path = tmp / "dataset.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        run_all(world, path, [])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=train_args)
def test_arbitrary_training_arguments_in_folder_mode(world: dict[str, Path], args: list[tuple[str, str]]) -> None:
    with scratch():
        run_all(world, None, flatten_args(args, world) + ["--train_data_dir", str(world["root"])])


ARG_NAMES = ["train_data_dir", "reg_data_dir", "dataset_config", "train_batch_size", "resolution", "enable_bucket",
             "caption_extension", "max_train_steps", "max_train_epochs", "save_every_n_steps", "save_every_n_epochs",
             "save_n_epoch_ratio", "gradient_accumulation_steps", "dataset_repeats", "bucket_reso_steps",
             "min_bucket_reso", "masked_loss", "output_name", "save_model_as", "in_json", "dataset_class",
             "keep_tokens", "shuffle_caption", "validation_split", "validation_seed"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(st.sampled_from(ARG_NAMES), st.one_of(st.sampled_from(["PARENT", "IMAGES"]), values),
                              max_size=8),
       sectioned=st.booleans())
def test_arbitrary_training_config_values(world: dict[str, Path], config: dict, sectioned: bool) -> None:
    """Typed values from a --config_file TOML (sd-scripts skips argparse's type checks for them)."""
    with scratch() as tmp:
        path = tmp / "train.toml"
        body = substitute(config, world)
        path.write_text(toml_document({"training": body} if sectioned else body), encoding="utf-8")
        results = run_checks(Target(kohya_root=world["checkout"], train_config=path),
                             registry=gate_checks("dataset")).values()
        for r in results:
            assert r.status is not Status.ERROR, (r.check_id, r.summary, r.traceback)
