"""The step plan on the cases where it once differed from sd-scripts' own DatasetGroup.

tests/differential found them on random datasets against a real checkout (kohya-ss/sd-scripts 48d368fa). Each
test here rebuilds one such case from scratch and says, in its docstring, what sd-scripts itself did on the
same files (its DatasetGroup built by train_network.py's own code, tests/differential/sd_group.py): a crash
named by exception and function, or the numbers of the group it built. No sd-scripts is needed to run them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasetup.engine.result import Status
from lorasetup.sd.dataset.buckets import Buckets, make_bucket_resolutions
from tests.dataset.test_dataset_checks import image, run
from tests.support.dataset_checkout import make_checkout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkout(tmp_path_factory.mktemp("sd-scripts"))


def buckets(details: list[str]) -> dict[str, int]:
    """The `buckets: WxH: n, ...` line of dataset.steps' details."""
    line = next(d for d in details if d.strip().startswith("buckets:"))
    return {reso: int(n) for reso, n in (item.split(": ") for item in line.split("buckets: ")[1].split(", "))}


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- min_bucket_reso below one step

def test_min_bucket_reso_below_one_step_fails_with_a_safe_fix(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts: ZeroDivisionError in model_util.make_bucket_resolutions (min_bucket_reso 32 rounds down to 0
    with bucket_reso_steps 64), whatever the batch size. lorasetup crashed on it, or planned the run."""
    image(tmp_path / "img" / "a.png", (96, 96))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nresolution = 96\nmin_bucket_reso = 32\n'
                               f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL
    assert result.summary.startswith("d.toml datasets[0]: min_bucket_reso 32 (general.min_bucket_reso) is below "
                                     "bucket_reso_steps 64 (sd-scripts' default)")
    assert "ZeroDivisionError" in result.summary and "min_bucket_reso = 64" in result.hint
    assert result.fix is not None and result.fix.safe
    result.fix.apply()
    assert "min_bucket_reso = 64\n" in dataset.read_text() and list(tmp_path.glob("d.toml.bak-*"))
    assert run(checkout, dataset)["dataset.steps"].status is Status.OK


def test_shared_min_bucket_reso_is_fixed_in_each_dataset_when_another_cannot_take_it(checkout: Path,
                                                                                      tmp_path: Path) -> None:
    """A [general] value also inherited by a no-upscale dataset at resolution 48, which asserts
    min_bucket_reso <= 48: the fix sets the value in the crashing dataset's own table instead."""
    image(tmp_path / "a" / "0.png", (96, 96))
    image(tmp_path / "b" / "0.png", (48, 48))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nmin_bucket_reso = 32\n'
                               f'[[datasets]]\nresolution = 96\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "a"}"\n'
                               f'[[datasets]]\nresolution = 48\nbucket_no_upscale = true\nbucket_reso_steps = 32\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "b"}"\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and result.fix is not None
    result.fix.apply()
    text = dataset.read_text()
    assert "[general]\nenable_bucket = true\nmin_bucket_reso = 32\n" in text
    assert "[[datasets]]\nresolution = 96\nmin_bucket_reso = 64\n" in text  # added after the table's keys
    assert run(checkout, dataset)["dataset.steps"].status is Status.OK


def test_min_bucket_reso_from_the_training_config_is_fixed_there(checkout: Path, tmp_path: Path) -> None:
    """Folder mode, the value in the training config TOML: that file gets the fix; from the command line,
    there is no file to fix and the hint says what to pass."""
    image(tmp_path / "train" / "2_sks" / "a.png", (96, 96))
    train = tmp_path / "train.toml"
    train.write_text(f'[dataset_arguments]\ntrain_data_dir = "{tmp_path / "train"}"\nresolution = "96"\n'
                     "enable_bucket = true\nmin_bucket_reso = 16\nbucket_reso_steps = 32\n")
    result = run(checkout, train=train)["dataset.steps"]
    assert result.status is Status.FAIL and "train.toml [dataset_arguments] min_bucket_reso" in result.summary
    result.fix.apply()
    assert "min_bucket_reso = 32\n" in train.read_text()
    assert run(checkout, train=train)["dataset.steps"].status is Status.OK
    cli = run(checkout, args=["--train_data_dir", str(tmp_path / "train"), "--resolution", "96", "--enable_bucket",
                              "--min_bucket_reso", "16", "--bucket_reso_steps", "32"])["dataset.steps"]
    assert cli.status is Status.FAIL and cli.fix is None and "min_bucket_reso = 32" in cli.hint
    train.write_text("[dataset_arguments]\nmin_bucket_reso = 16\n")  # with a dataset config that does not set it
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nresolution = 96\nbucket_reso_steps = 32\n'
                               f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "train" / "2_sks"}"\n')
    result = run(checkout, dataset, train)["dataset.steps"]
    assert result.status is Status.FAIL and result.fix is not None
    result.fix.apply()
    assert train.read_text() == "[dataset_arguments]\nmin_bucket_reso = 32\n"
    assert run(checkout, dataset, train)["dataset.steps"].status is Status.OK


def test_no_min_bucket_reso_helps_when_the_step_is_above_the_resolution(checkout: Path, tmp_path: Path) -> None:
    """resolution 48 with bucket_reso_steps 64: any min_bucket_reso <= 48 rounds to 0; no value fixes it."""
    image(tmp_path / "img" / "a.png", (48, 48))
    dataset = config(tmp_path, f'[[datasets]]\nenable_bucket = true\nresolution = 48\nmin_bucket_reso = 32\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and result.fix is None
    assert "lower bucket_reso_steps" in result.hint


def test_bucket_no_upscale_skips_the_bucket_list_and_its_crash(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts builds the group: with bucket_no_upscale it never calls make_bucket_resolutions."""
    image(tmp_path / "img" / "a.png", (96, 96))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nbucket_no_upscale = true\nresolution = 96\n'
                               f'min_bucket_reso = 32\n[[datasets]]\n[[datasets.subsets]]\n'
                               f'image_dir = "{tmp_path / "img"}"\n')
    assert run(checkout, dataset)["dataset.steps"].status is Status.OK


# ----------------------------------------------------------------------------- bucket_no_upscale and 0-px buckets

def test_no_upscale_images_with_a_side_below_one_step_fail_by_name(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts at resolution 64, steps 64: ZeroDivisionError in BucketManager.select_bucket for the 160x48
    image (shrunk to the 64x64 area its height rounds to 0), a 0x64 bucket for 56x72 (the group builds; the run
    fails when it loads the image). Batch size 1: the crash does not depend on it."""
    for name, size in (("ok.png", (128, 128)), ("wide.png", (160, 48)), ("narrow.png", (56, 72))):
        image(tmp_path / "img" / name, size)
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nbucket_no_upscale = true\nresolution = 64\n'
                               f'min_bucket_reso = 64\n[[datasets]]\n[[datasets.subsets]]\n'
                               f'image_dir = "{tmp_path / "img"}"\n')
    results = run(checkout, dataset)
    steps = results["dataset.steps"]
    assert steps.status is Status.FAIL
    assert steps.summary.startswith("d.toml datasets[0]: 2 images get a bucket with a 0-px side (first: narrow.png "
                                    "56x72 -> bucket 0x64)")
    assert steps.details[:2] == ["datasets[0]: narrow.png 56x72 -> bucket 0x64",
                                 "datasets[0]: wide.png 160x48 -> bucket 0x0"]
    assert "bucket_no_upscale = false (general.bucket_no_upscale)" in steps.hint
    images = results["dataset.images"]
    assert images.status is Status.FAIL and "wide.png: 160x48 gets a 0x0 bucket" in " ".join(images.details)


def test_no_upscale_bucket_arithmetic_never_raises() -> None:
    buckets = Buckets(True, (64, 64), None, None, 64)
    assert [buckets.select(*s) for s in ((128, 128), (160, 48), (56, 72), (72, 48), (0, 5))] == \
        [(64, 64), (0, 0), (0, 64), (64, 0), (0, 0)]
    assert make_bucket_resolutions((96, 96), 0, 1024, 64) == []  # sd-scripts divides by the 0 here
    assert Buckets(False, (96, 96), 0, 1024, 64).select(96, 96) == (0, 0)


def test_a_validation_image_with_a_zero_px_bucket_fails(checkout: Path, tmp_path: Path) -> None:
    """The validation dataset loads subsets with num_repeats = 0 too (one repeat each) and buckets its part of
    them: sd-scripts' validation group holds a 0x64 bucket for a 56x72 image there."""
    image(tmp_path / "train" / "a.png", (128, 128))
    for name in ("x.png", "y.png"):
        image(tmp_path / "skipped" / name, (56, 72))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nbucket_no_upscale = true\nresolution = 128\n'
                               f'min_bucket_reso = 64\nvalidation_split = 0.5\nvalidation_seed = 1\n[[datasets]]\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "train"}"\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "skipped"}"\nnum_repeats = 0\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and "56x72 -> bucket 0x64" in result.summary


# ----------------------------------------------------------------------------- what a Dataset's __init__ stops on

def test_the_datasets_own_assertions_stop_the_plan(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts: AssertionError 'min_bucket_reso must be equal or less than resolution' (from the command
    line here, which dataset.schema leaves to the args gate) and 'resolution is required'; lorasetup planned
    both runs."""
    image(tmp_path / "img" / "a.png", (96, 96))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nresolution = 96\n[[datasets]]\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n')
    result = run(checkout, dataset, args=["--min_bucket_reso", "128"])["dataset.steps"]
    assert result.status is Status.FAIL
    assert "min_bucket_reso 128 (--min_bucket_reso) is above the resolution's short side 96" in result.summary
    dataset.write_text(dataset.read_text().replace("resolution = 96\n", ""))
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and "resolution is required" in result.summary


def test_an_empty_folder_under_validation_split_fails(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts: ValueError 'not enough values to unpack' in split_train_val, for an empty training subset and
    for an empty subset with num_repeats = 0 (which only the validation dataset loads)."""
    image(tmp_path / "img" / "a.png", (96, 96))
    (tmp_path / "empty").mkdir()
    text = (f'[general]\nresolution = 96\nvalidation_split = 0.25\n[[datasets]]\n'
            f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n'
            f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "empty"}"\n')
    for variant in (text, text + "num_repeats = 0\n"):
        result = run(checkout, config(tmp_path, variant))["dataset.steps"]
        assert result.status is Status.FAIL and "split_train_val crashes on an empty folder" in result.summary
    without_split = text.replace("validation_split = 0.25\n", "")
    assert run(checkout, config(tmp_path, without_split))["dataset.steps"].status is Status.OK


def test_metadata_entry_for_a_missing_image_without_its_size_fails(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts: FileNotFoundError in imagesize.get while make_buckets reads the size of gone.png (even with
    batch size 1 and no buckets); with image_size in the metadata it does not read the file."""
    image(tmp_path / "img" / "a.png", (96, 96))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"a.png": {"caption": "x"}, "gone.png": {"caption": "y"}}))
    dataset = config(tmp_path, f'[general]\nresolution = 96\n[[datasets]]\n[[datasets.subsets]]\n'
                               f'metadata_file = "{meta}"\nimage_dir = "{tmp_path / "img"}"\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.status is Status.FAIL and "FileNotFoundError" in result.summary
    meta.write_text(json.dumps({"a.png": {"caption": "x"}, "gone.png": {"caption": "y", "image_size": [96, 96]}}))
    assert run(checkout, dataset)["dataset.steps"].data["samples_per_epoch"] == 2


# ----------------------------------------------------------------------------- numbers that differed

SPLIT_SIZES = ((64, 128), (128, 64), (96, 96), (64, 64), (128, 128), (160, 96), (96, 160), (80, 112), (112, 80),
               (144, 64))


def test_validation_split_without_its_seed_follows_the_runs_seed(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts with --seed 7: 21 train images x repeats in buckets 64x64: 9, 64x128: 6, 128x64: 6, so 11
    batches of 2 (lorasetup took the first 7 images unshuffled). Without --seed the split is random: the plan
    says it is not exact."""
    for i, size in enumerate(SPLIT_SIZES):
        image(tmp_path / "img" / f"{i}.png", size)
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nresolution = 96\nmin_bucket_reso = 64\n'
                               f'max_bucket_reso = 256\nbatch_size = 2\nvalidation_split = 0.3\n[[datasets]]\n'
                               f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\nnum_repeats = 3\n')
    seeded = run(checkout, dataset, args=["--seed", "7", "--max_train_epochs", "2"])["dataset.steps"]
    assert (seeded.data["train_images_x_repeats"], seeded.data["batches_per_epoch"], seeded.data["total_steps"],
            seeded.data["exact"]) == (21, 11, 22, True)
    assert buckets(seeded.details) == {"64x64": 9, "64x128": 6, "128x64": 6}
    unseeded = run(checkout, dataset)["dataset.steps"]
    assert unseeded.data["train_images_x_repeats"] == 21 and unseeded.data["exact"] is False


def test_cache_info_buckets_use_the_sizes_in_metadata_cache(checkout: Path, tmp_path: Path) -> None:
    """sd-scripts takes the sizes of a cache_info listing from metadata_cache.json, not from the files (here
    stale: all three files are 96x96): buckets 64x64: 2, 64x128: 2, 128x64: 2, 3 batches of 2."""
    folder = tmp_path / "img"
    for i in range(3):
        image(folder / f"{i}.png", (96, 96))
    (folder / "metadata_cache.json").write_text(json.dumps({
        str(folder / "0.png"): {"caption": "a", "resolution": [160, 64]},
        str(folder / "1.png"): {"caption": "b", "resolution": [64, 160]},
        str(folder / "2.png"): {"caption": "c", "resolution": [96, 96]}}))
    dataset = config(tmp_path, f'[general]\nenable_bucket = true\nresolution = 96\nmin_bucket_reso = 64\n'
                               f'batch_size = 2\ncache_info = true\n[[datasets]]\n[[datasets.subsets]]\n'
                               f'image_dir = "{folder}"\nnum_repeats = 2\n')
    result = run(checkout, dataset)["dataset.steps"]
    assert result.data["batches_per_epoch"] == 3
    assert buckets(result.details) == {"64x64": 2, "64x128": 2, "128x64": 2}
