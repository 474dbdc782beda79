"""The dataset gate on real datasets written with Pillow: the seed's numbers, the failures people hit
(typo'd key, missing folder, .txt vs .caption, the Windows `\\t` path), broken images and captions, folder mode,
step arithmetic with buckets, reg balancing, accumulation and processes, and the fixes with their backups.

sd-scripts itself is not a test dependency: each test builds a stand-in checkout holding only the lines of
sd-scripts this gate reads (the entry script's `ConfigSanitizer(...)` and `verify_bucket_reso_steps(N)` calls,
an `add_argument` line for the did-you-mean), and the schema tables come from lorasetup's built-in copy.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lorasetup.engine.context import Context
from lorasetup.engine.result import FixError, Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd.dataset.buckets import Buckets, make_bucket_resolutions
from lorasetup.sd.dataset.plan import compute_steps, dataset_step_plan
from lorasetup.sd.dataset.scan import probe_image
from tests.support.checks import gate_checks, run_checks
from tests.support.dataset_checkout import make_checkout

DATASET_IDS = ("dataset.schema", "dataset.paths", "dataset.images", "dataset.captions", "dataset.steps")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkout(tmp_path_factory.mktemp("sd-scripts"))


def image(path: Path, size: tuple[int, int] = (512, 512), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 60)).save(path, format=fmt)
    return path


def run(checkout: Path, dataset: Path | None = None, train: Path | None = None, args: list[str] | None = None,
        script: str = "train_network.py", accelerate: Path | None = None) -> dict[str, Result]:
    return run_checks(Target(kohya_root=checkout, script=script, dataset_config=dataset, train_config=train,
                             train_args=args or [], accelerate_config=accelerate), registry=gate_checks("dataset"))


@pytest.fixture(scope="module")
def seed_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's images, written once per module: 23 PNGs of four sizes, 100 JPEG reg images."""
    root = tmp_path_factory.mktemp("seed-images")
    sizes = [(512, 512), (512, 768), (768, 512), (640, 512)]
    for i in range(23):
        image(root / "train" / f"spyke_{i:02d}.png", sizes[i % 4])
    for i in range(100):
        image(root / "reg" / f"man_{i:03d}.jpg", (512, 512), "JPEG")
    return root


@pytest.fixture
def seed(seed_images: Path):
    """Makes the seed's dataset in a folder: 23 train images x 10 repeats, 100 reg images, keep_tokens = 1,
    batch 1, captions with `caption_ext`, and the dataset TOML's caption_extension `toml_ext` (None: unset)."""
    def make(tmp: Path, caption_ext: str = ".txt", toml_ext: str | None = ".txt") -> tuple[Path, Path]:
        shutil.copytree(seed_images, tmp / "img")
        for i in range(23):
            (tmp / "img" / "train" / f"spyke_{i:02d}{caption_ext}").write_text(f"spyke, a drawing, pose {i}\n")
        return _seed_configs(tmp, toml_ext)
    return make


def _seed_configs(tmp: Path, toml_ext: str | None) -> tuple[Path, Path]:
    ext_line = f'caption_extension = "{toml_ext}"\n' if toml_ext else ""
    dataset = tmp / "dataset.toml"
    dataset.write_text(
        "[general]\nshuffle_caption = true\nkeep_tokens = 1\n" + ext_line + "enable_bucket = true\n\n"
        "[[datasets]]\nresolution = 512\nbatch_size = 1\n\n"
        f"  [[datasets.subsets]]\n  image_dir = \"{tmp / 'img' / 'train'}\"\n  num_repeats = 10\n\n"
        f"  [[datasets.subsets]]\n  image_dir = \"{tmp / 'img' / 'reg'}\"\n  is_reg = true\n  num_repeats = 1\n")
    train = tmp / "train.toml"
    train.write_text('[training]\nmax_train_steps = 920\nsave_every_n_steps = 230\noutput_name = "spyke"\n')
    return dataset, train


# ----------------------------------------------------------------------------- the seed and the headline failures

def test_seed_passes_with_460_steps_per_epoch(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path)
    results = run(checkout, dataset, train)
    assert [results[i].status for i in DATASET_IDS] == [Status.OK] * 5, {i: results[i].summary for i in DATASET_IDS}
    steps = results["dataset.steps"]
    assert steps.summary.startswith("460 steps per epoch; 920 steps = 2 epochs; saves at steps 230, 460, 690, 920")
    assert steps.data["total_steps"] == 920
    assert steps.data["steps_per_epoch"] == 460
    assert steps.data["save_steps"] == [230, 460, 690, 920]
    assert steps.data["train_images_x_repeats"] == 230 and steps.data["reg_images_x_repeats"] == 100
    assert steps.data["samples_per_epoch"] == 460
    assert [s["file"] for s in steps.data["saves"]][-2:] == ["spyke-step00000920.safetensors", "spyke.safetensors"]


def test_seed_step_plan_for_the_smoke_gate(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path)
    ctx = Context(Target(kohya_root=checkout, dataset_config=dataset, train_config=train))
    assert dataset_step_plan(ctx)["total_steps"] == 920
    ctx.close()


def test_typo_missing_dir_and_caption_mismatch_fail_fast_with_place_and_fix(
        checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path, caption_ext=".txt", toml_ext=None)
    text = dataset.read_text().replace("num_repeats = 10", "num_repeat = 10")
    text = text.replace(str(tmp_path / "img" / "reg"), str(tmp_path / "img" / "regularisation"))
    dataset.write_text(text)
    start = time.perf_counter()
    results = run(checkout, dataset, train)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    schema = results["dataset.schema"]
    assert schema.status is Status.FAIL
    assert schema.summary.startswith("dataset.toml:12 datasets[0].subsets[0].num_repeat: unknown key")
    assert "did you mean `num_repeats`?" in schema.summary and "num_repeats" in schema.hint
    paths = results["dataset.paths"]
    assert paths.status is Status.FAIL and "datasets[0].subsets[1].image_dir" in paths.summary
    assert "does not exist" in paths.summary
    captions = results["dataset.captions"]
    assert captions.status is Status.FAIL
    assert "23 of 23 images have no .caption caption" in captions.summary and "have a .txt file" in captions.summary
    assert captions.fix is not None and captions.fix.safe


def test_caption_fix_edits_one_line_and_keeps_the_rest_byte_for_byte(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path, toml_ext=None)
    before = dataset.read_bytes()
    fix = run(checkout, dataset, train)["dataset.captions"].fix
    assert fix is not None and any("caption_extension" in c for c in fix.commands)
    fix.apply()
    after = dataset.read_bytes()
    assert after.replace(b'  caption_extension = ".txt"\n', b"", 1) == before
    backups = list(tmp_path.glob("dataset.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == before
    assert run(checkout, dataset, train)["dataset.captions"].status is Status.OK


def test_caption_fix_replaces_a_general_value_all_subsets_get_wrong(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path, caption_ext=".txt", toml_ext=".caption")
    before = dataset.read_text()
    fix = run(checkout, dataset, train)["dataset.captions"].fix
    fix.apply()
    assert dataset.read_text() == before.replace('caption_extension = ".caption"', 'caption_extension = ".txt"')


def test_fix_refuses_when_the_file_changed_after_the_check(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path, toml_ext=None)
    fix = run(checkout, dataset, train)["dataset.captions"].fix
    dataset.write_text(dataset.read_text() + "\n# edited\n")
    with pytest.raises(FixError, match="changed since the check read it"):
        fix.apply()
    assert not list(tmp_path.glob("dataset.toml.bak-*"))


def test_caption_extension_without_dot(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path, toml_ext="txt")
    result = run(checkout, dataset, train)["dataset.captions"]
    assert result.status is Status.FAIL
    assert "no leading dot" in result.summary or "have a .txt file" in result.summary


# ----------------------------------------------------------------------------- the Windows path traps

def test_tab_in_double_quoted_path_fails_and_literal_fix_finds_the_folder(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data\\train"  # a real folder whose name holds a backslash and a `t`
    image(folder / "a.png")
    (folder / "a.caption").write_text("spyke\n")
    dataset = tmp_path / "dataset.toml"
    text = f'[general]\nresolution = 512\n\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path}/data\\train"\n'
    dataset.write_text(text)
    result = run(checkout, dataset)["dataset.paths"]
    assert result.status is Status.FAIL and "control character" in result.summary
    assert "\\t" in result.summary and "datasets[0].subsets[0].image_dir" in result.summary
    result.fix.apply()
    assert dataset.read_text() == text.replace(f'"{tmp_path}/data\\train"', f"'{tmp_path}/data\\train'")
    again = run(checkout, dataset)
    assert again["dataset.paths"].status is Status.OK
    assert again["dataset.steps"].data["total_steps"] == 1600


def test_backslash_u_syntax_error_names_line_and_offers_literal_fix(checkout: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset.toml"
    dataset.write_text('[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "C:\\Users\\me\\img"\n')
    results = run(checkout, dataset)
    schema = results["dataset.schema"]
    assert schema.status is Status.FAIL
    assert f"{dataset}:4:" in schema.summary and "not valid TOML" in schema.summary
    assert "single quotes" in schema.hint
    assert results["dataset.paths"].status is Status.SKIP
    schema.fix.apply()
    assert "image_dir = 'C:\\Users\\me\\img'" in dataset.read_text()
    assert run(checkout, dataset)["dataset.schema"].status is Status.OK


def test_bucket_reso_steps_fix_uses_the_scripts_divisor(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path)
    dataset.write_text(dataset.read_text().replace("batch_size = 1\n", "batch_size = 1\nbucket_reso_steps = 48\n"))
    result = run(checkout, dataset, train)["dataset.schema"]
    assert result.status is Status.FAIL and "divisible by 64" in result.summary
    result.fix.apply()
    assert "bucket_reso_steps = 64\n" in dataset.read_text()
    assert run(checkout, dataset, train)["dataset.schema"].status is Status.OK


def test_sdxl_script_reads_its_own_divisor_and_the_base_sanitizer(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path)
    dataset.write_text(dataset.read_text().replace("batch_size = 1\n", "batch_size = 1\nbucket_reso_steps = 32\n"))
    result = run(checkout, dataset, train, script="sdxl_train_network.py")["dataset.schema"]
    assert result.status is Status.OK
    assert "train_network.py: ConfigSanitizer(True, True, args.masked_loss, True)" in result.details[0]


def test_resolution_missing_everywhere(checkout: Path, tmp_path: Path) -> None:
    image(tmp_path / "img" / "a.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n')
    assert "resolution is required" in run(checkout, dataset)["dataset.schema"].summary
    assert run(checkout, dataset, args=["--resolution", "512"])["dataset.schema"].status is Status.OK


# ----------------------------------------------------------------------------- images

def _png_with_size(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose IHDR claims width x height (the huge-dimension case)."""
    image(path, (8, 8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_broken_images_are_named(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my images" / "スパイク"
    image(folder / "good.png")
    image(folder / "photo.webp", (640, 480), "WEBP")
    image(folder / "photo2.jpeg", (480, 640), "JPEG")
    (folder / "zero.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"this is not an image at all")
    full = image(tmp_path / "full.png", (256, 256)).read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    image(folder / "mislabelled.jpg", (512, 512), "PNG")
    _png_with_size(folder / "huge.png", 20000, 20000)
    image(folder / "skipped.Jpg", (512, 512), "JPEG")
    image(folder / "tiny.png", (64, 64))
    image(folder / "dup.png")
    image(folder / "dup.jpg", fmt="JPEG")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\nenable_bucket = true\n[[datasets]]\n[[datasets.subsets]]\n'
                       f'image_dir = "{folder}"\n')
    result = run(checkout, dataset)["dataset.images"]
    assert result.status is Status.FAIL
    text = "\n".join(result.details)
    assert "zero.png: empty file (0 bytes)" in text
    assert "corrupt.jpg: not an image Pillow can open" in text
    assert "truncated.png: truncated PNG" in text
    assert "huge.png: 20000x20000 is over Pillow's decompression-bomb limit" in text
    assert "mislabelled.jpg holds PNG data" in text
    assert "skipped.Jpg" in text and "sd-scripts skips" in text
    assert "tiny.png 64x64" in text and "min_bucket_reso 256" in text
    assert "stem with two images sharing one caption file: dup" in text
    assert "good.png" not in text and "photo.webp" not in text and "photo2.jpeg" not in text


def test_probe_reads_sizes_of_each_format(tmp_path: Path) -> None:
    for name, fmt, size in (("a.png", "PNG", (300, 200)), ("b.jpg", "JPEG", (200, 300)),
                            ("c.webp", "WEBP", (64, 32)), ("d.bmp", "BMP", (17, 9))):
        probe = probe_image(str(image(tmp_path / name, size, fmt)))
        assert (probe.size, probe.problem) == (size, None), name
    assert probe_image(str(tmp_path)).problem == "is a folder named like an image"


def test_subset_without_images_fails(checkout: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    image(tmp_path / "empty" / "photo.GIF", fmt="GIF")
    dataset = tmp_path / "d.toml"
    dataset.write_text('[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\n'
                       f'image_dir = "{tmp_path / "empty"}"\n')
    results = run(checkout, dataset)
    assert (results["dataset.images"].status is Status.FAIL
            and "no images sd-scripts picks up" in results["dataset.images"].summary)
    assert results["dataset.steps"].status is Status.FAIL and "No data found" in results["dataset.steps"].summary


# ----------------------------------------------------------------------------- captions

def test_caption_problems(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "img"
    for name in ("a", "b", "c", "d", "e"):
        image(folder / f"{name}.png")
    (folder / "a.caption").write_bytes(b"")
    (folder / "b.caption").write_bytes("spyke, caf\u00e9".encode("latin-1"))
    (folder / "c.caption").write_text("   \n")
    (folder / "d.caption").write_text("\ufeffspyke, standing\n", encoding="utf-8")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    result = run(checkout, dataset)["dataset.captions"]
    assert result.status is Status.FAIL
    text = "\n".join(result.details)
    assert "a.caption: empty caption file" in text
    assert "b.caption: is not UTF-8 (byte 0xe9 at offset" in text
    assert "1 caption file with an empty first line" in text
    assert "UTF-8 BOM" in text
    assert "1 of 5 images have no .caption caption; each trains on an empty caption" in text


def test_trigger_word_and_reg_warnings(checkout: Path, tmp_path: Path) -> None:
    train, reg = tmp_path / "subject", tmp_path / "reg_men"
    for i, caption in enumerate(["spyke, red", "spyke, blue", "a man, spyke"]):
        image(train / f"{i}.png")
        (train / f"{i}.txt").write_text(caption)
    image(reg / "r.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\ncaption_extension = ".txt"\nshuffle_caption = true\n'
                       f'keep_tokens = 1\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{train}"\n'
                       f'[[datasets.subsets]]\nimage_dir = "{reg}"\n')
    result = run(checkout, dataset)["dataset.captions"]
    assert result.status is Status.WARN
    text = "\n".join(result.details)
    assert "keeps different leading tokens" in text and "spyke x2" in text and "a man x1" in text
    assert "looks like regularization images but is_reg is not set" in text


# ----------------------------------------------------------------------------- folder mode and JSON

def test_folder_mode(checkout: Path, tmp_path: Path) -> None:
    base = tmp_path / "train data"
    for i in range(4):
        image(base / "10_spyke man" / f"{i}.png")
    image(base / "notes" / "x.png")
    results = run(checkout, args=["--train_data_dir", str(base), "--resolution", "512"])
    assert results["dataset.paths"].status is Status.OK
    assert "10 repeats, class tokens 'spyke man'" in results["dataset.paths"].details[0]
    assert any("'notes' is ignored" in d for d in results["dataset.paths"].details)
    assert results["dataset.captions"].status is Status.WARN  # no captions: the class tokens are used
    assert "class tokens 'spyke man'" in results["dataset.captions"].summary
    assert results["dataset.steps"].data["steps_per_epoch"] == 40


def test_folder_mode_with_images_directly_in_train_data_dir(checkout: Path, tmp_path: Path) -> None:
    for i in range(3):
        image(tmp_path / "imgs" / f"{i}.png")
    result = run(checkout, args=["--train_data_dir", str(tmp_path / "imgs")])["dataset.paths"]
    assert result.status is Status.FAIL
    assert "holds 3 images directly" in result.summary and "No data found" in result.summary
    assert "10_mytoken" in result.hint


def test_folder_mode_caption_fix_edits_the_training_config(checkout: Path, tmp_path: Path) -> None:
    image(tmp_path / "d" / "5_tok" / "a.png")
    (tmp_path / "d" / "5_tok" / "a.txt").write_text("tok, a\n")
    train = tmp_path / "train.toml"
    train.write_text(f'[dataset]\ntrain_data_dir = "{tmp_path / "d"}"\nresolution = "512"\n')
    result = run(checkout, train=train)["dataset.captions"]
    assert result.status is Status.FAIL
    result.fix.apply()
    assert 'caption_extension = ".txt"\n' in train.read_text()
    assert run(checkout, train=train)["dataset.captions"].status is Status.OK


def test_json_config_and_no_dataset(checkout: Path, tmp_path: Path, seed) -> None:
    dataset, train = seed(tmp_path)
    import json

    import tomllib
    json_config = tmp_path / "dataset.json"
    json_config.write_text(json.dumps(tomllib.loads(dataset.read_text())))
    assert run(checkout, json_config, train)["dataset.steps"].data["total_steps"] == 920
    nothing = run(checkout)
    assert {r.status for r in nothing.values()} == {Status.SKIP}


# ----------------------------------------------------------------------------- step arithmetic

def _steps(checkout: Path, tmp_path: Path, dataset_text: str, train_text: str = "",
           accelerate: str | None = None) -> dict:
    dataset = tmp_path / "d.toml"
    dataset.write_text(dataset_text)
    train = tmp_path / "t.toml"
    train.write_text(train_text)
    acc = None
    if accelerate is not None:
        acc = tmp_path / "accelerate.yaml"
        acc.write_text(accelerate)
    ctx = Context(Target(kohya_root=checkout, dataset_config=dataset, train_config=train, accelerate_config=acc))
    try:
        return compute_steps(ctx).data()
    finally:
        ctx.close()


def test_buckets_count_partial_batches_per_bucket(checkout: Path, tmp_path: Path) -> None:
    for i, size in enumerate([(512, 512)] * 3 + [(512, 768)] * 2 + [(768, 512)]):
        image(tmp_path / "img" / f"{i}.png", size)
    text = (f'[general]\nenable_bucket = true\n[[datasets]]\nresolution = 512\nbatch_size = 2\n'
            f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\nnum_repeats = 1\n')
    data = _steps(checkout, tmp_path, text, "max_train_epochs = 3\n")
    # buckets: 512x512 x3 -> 2 batches, 384x640 x2 -> 1, 640x384 x1 -> 1
    assert data["batches_per_epoch"] == 4 and data["steps_per_epoch"] == 4 and data["total_steps"] == 12
    flat = _steps(checkout, tmp_path, text.replace("enable_bucket = true", "enable_bucket = false"))
    assert flat["batches_per_epoch"] == 3


def test_bucket_resolutions_and_selection() -> None:
    resos = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in resos and (448, 576) in resos and (256, 1024) in resos
    buckets = Buckets(False, (512, 512), 256, 1024, 64)
    assert buckets.select(512, 768) == (384, 640)
    assert buckets.select(1024, 1024) == (512, 512)
    assert Buckets(True, (512, 512), None, None, 64).select(300, 200) == (256, 192)


def test_reg_balancing_uses_only_as_many_reg_images_as_train(checkout: Path, tmp_path: Path) -> None:
    for i in range(3):
        image(tmp_path / "t" / f"{i}.png")
    for i in range(10):
        image(tmp_path / "r" / f"{i}.png")
    text = (f'[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "t"}"\n'
            f'num_repeats = 2\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "r"}"\nis_reg = true\n')
    data = _steps(checkout, tmp_path, text)
    assert (data["train_images_x_repeats"], data["reg_images_x_repeats"], data["samples_per_epoch"]) == (6, 10, 12)


def test_accumulation_processes_epochs_and_save_points(checkout: Path, tmp_path: Path) -> None:
    for i in range(10):
        image(tmp_path / "t" / f"{i}.png")
    text = (f'[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "t"}"\n'
            f'num_repeats = 5\n')
    train = "max_train_epochs = 3\ngradient_accumulation_steps = 4\nsave_every_n_epochs = 1\n"
    data = _steps(checkout, tmp_path, text, train, accelerate="compute_environment: LOCAL_MACHINE\nnum_processes: 2\n")
    # 50 batches / 2 processes = 25 per process, / 4 accumulation = 7 steps per epoch
    assert (data["steps_per_epoch"], data["total_steps"], data["epochs"]) == (7, 21, 3)
    assert [s["file"] for s in data["saves"]] == ["epoch-000001.safetensors", "epoch-000002.safetensors",
                                                  "last.safetensors"]
    assert data["save_steps"] == [7, 14, 21]
    ratio = _steps(checkout, tmp_path, text, "max_train_steps = 125\nsave_n_epoch_ratio = 2\n")
    assert (ratio["steps_per_epoch"], ratio["epochs"]) == (50, 3)
    assert [s["step"] for s in ratio["saves"]] == [50, 100, 125]


def test_impossible_numbers_fail(checkout: Path, tmp_path: Path) -> None:
    image(tmp_path / "t" / "a.png")
    text = ('[general]\nresolution = 512\n[[datasets]]\nbatch_size = 0\n[[datasets.subsets]]\n'
            f'image_dir = "{tmp_path / "t"}"\n')
    dataset = tmp_path / "d.toml"
    dataset.write_text(text)
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and "batch_size 0" in result.summary
    dataset.write_text(text.replace("batch_size = 0", "batch_size = 1"))
    result = run(checkout, dataset, args=["--save_every_n_steps", "0"])["dataset.steps"]
    assert result.status is Status.FAIL and "save_every_n_steps = 0" in result.summary


def test_command_line_values_resolve_below_the_dataset_config(checkout: Path, tmp_path: Path) -> None:
    for i in range(4):
        image(tmp_path / "t" / f"{i}.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text('[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\n'
                       f'image_dir = "{tmp_path / "t"}"\n')
    data = run(checkout, dataset, args=["--train_batch_size", "2", "--dataset_repeats", "3"])["dataset.steps"].data
    assert (data["samples_per_epoch"], data["batches_per_epoch"]) == (12, 6)
    dataset.write_text(dataset.read_text().replace("resolution = 512", "resolution = 512\nbatch_size = 4"))
    data = run(checkout, dataset, args=["--train_batch_size", "2"])["dataset.steps"].data
    assert data["batches_per_epoch"] == 1


def test_missing_metadata_file_and_relative_paths(checkout: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "rel" / "a.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text('[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "rel"\n'
                       '[[datasets]]\n[[datasets.subsets]]\nmetadata_file = "meta.json"\n')
    result = run(checkout, dataset)["dataset.paths"]
    assert result.status is Status.FAIL and "metadata_file = 'meta.json': does not exist" in result.summary
    assert any("is relative" in d for d in result.details)
    os.remove(tmp_path / "d.toml")


# ----------------------------------------------------------------------------- the other dataset kinds

def test_face_crop_caption_name_and_wildcard_captions(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "img"
    image(folder / "spyke_0_10_20_30.png")
    (folder / "spyke.caption").write_text("spyke, face\n")  # read_caption's second candidate
    image(folder / "b.png")
    (folder / "b.caption").write_text("\n\nfirst line empty\n")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    result = run(checkout, dataset)["dataset.captions"]
    assert result.status is Status.WARN and "1 caption file with an empty first line" in result.summary
    dataset.write_text(dataset.read_text().replace("resolution = 512", "resolution = 512\nenable_wildcard = true"))
    assert run(checkout, dataset)["dataset.captions"].status is Status.OK


def test_cache_info_takes_the_image_list_from_metadata_cache(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "img"
    for i in range(3):
        image(folder / f"{i}.png")
    (folder / "metadata_cache.json").write_text(
        '{"%s": {"caption": "a", "resolution": [512, 512]}}' % (folder / "0.png"))
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\ncache_info = true\n[[datasets]]\n[[datasets.subsets]]\n'
                       f'image_dir = "{folder}"\n')
    assert run(checkout, dataset)["dataset.steps"].data["train_images_x_repeats"] == 1


def test_fine_tuning_metadata_counts_entries(checkout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "img"
    image(folder / "a.png", (512, 768))
    (tmp_path / "meta.json").write_text('{"a.png": {"caption": "x"}, "gone.png": {"caption": "y", '
                                        '"image_size": [512, 512]}}')
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\nresolution = 512\nenable_bucket = true\nbatch_size = 2\n[[datasets.subsets]]\n'
                       f'metadata_file = "{tmp_path / "meta.json"}"\nimage_dir = "{folder}"\nnum_repeats = 3\n')
    results = run(checkout, dataset)
    assert results["dataset.schema"].status is Status.OK
    assert (results["dataset.images"].status is Status.WARN
            and "1 of 2 metadata entries" in results["dataset.images"].summary)
    data = results["dataset.steps"].data
    # 2 entries x 3 repeats; buckets 384x640 (3) and 512x512 (3) with batch 2 -> 2 + 2 batches
    assert (data["train_images_x_repeats"], data["batches_per_epoch"]) == (6, 4)


def test_controlnet_pairs_images_with_conditioning_images(checkout: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        image(tmp_path / "img" / f"{name}.png")
        (tmp_path / "img" / f"{name}.caption").write_text("x\n")
    image(tmp_path / "cond" / "a.jpg", fmt="JPEG")
    image(tmp_path / "cond" / "z.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text('[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\n'
                       f'image_dir = "{tmp_path / "img"}"\n'
                       f'conditioning_data_dir = "{tmp_path / "cond"}"\n')
    plain = run(checkout, dataset)["dataset.schema"]
    assert plain.status is Status.FAIL and "masked_loss" in plain.details[0]
    result = run(checkout, dataset, args=["--masked_loss"])["dataset.images"]
    assert result.status is Status.FAIL
    assert "1 image without a conditioning image" in result.details[0] and "(b)" in result.details[0]
    assert "1 conditioning image without a training image (z)" in result.details[1]


def test_validation_split_with_seed_is_exact(checkout: Path, tmp_path: Path) -> None:
    for i in range(10):
        image(tmp_path / "t" / f"{i}.png")
    image(tmp_path / "r" / "0.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\nresolution = 512\nvalidation_split = 0.25\nvalidation_seed = 3\n'
                       f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "t"}"\n'
                       f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "r"}"\nis_reg = true\n')
    data = run(checkout, dataset)["dataset.steps"].data
    # ceil(10 * 0.75) = 8 train images; the reg image is not split and balances to 8
    assert (data["train_images_x_repeats"], data["samples_per_epoch"]) == (8, 16)


def test_shared_general_bucket_steps_are_fixed_once(checkout: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        image(tmp_path / name / "0.png")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nresolution = 512\nenable_bucket = true\nbucket_reso_steps = 100\n'
                       f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "a"}"\n'
                       f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "b"}"\n')
    result = run(checkout, dataset)["dataset.schema"]
    assert result.status is Status.FAIL and result.summary.startswith("d.toml general.bucket_reso_steps = 100")
    result.fix.apply()
    assert dataset.read_text().count("bucket_reso_steps = 64\n") == 1
