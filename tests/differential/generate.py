"""Random datasets over every setting lorasetup's step plan reads, written to disk as a person would.

Each case is a folder of small PNGs (48-160 px, made with Pillow) with .txt captions for some of them, and either
a dataset TOML (1-3 datasets of 1-3 subsets: DreamBooth folders, reg folders, metadata_file subsets as JSON or
JSONL, cache_info listings) or folder mode (`--train_data_dir` with `<repeats>_<name>` folders, `--reg_data_dir`,
`--in_json`), plus training arguments on the command line. Every dataset setting is placed at random in the
subset, the dataset, [general] or the command line, so the resolution order is exercised too.

The same seed gives the same cases, so a divergence can be replayed: `generate(root, seed, n)`.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

SIZES = (48, 56, 64, 72, 80, 96, 112, 128, 144, 160)
RESOLUTIONS: tuple[Any, ...] = (64, 96, 128, 160, [96, 128], [128, 64], [160, 96])
# Dataset settings: where they may live (subset/dataset/general keys, and the command-line option).
ARG_NAME = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
STORE_TRUE = {"enable_bucket", "bucket_no_upscale", "flip_aug", "shuffle_caption"}
# Keys of the dataset table ([general] or [[datasets]]), never of a subset (config_util.py's DATASET schemas).
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "bucket_reso_steps", "min_bucket_reso",
                "max_bucket_reso", "bucket_no_upscale", "validation_split", "validation_seed"}


@dataclass
class Case:
    """One generated setup: the training arguments both sides get, and what it is, in a line."""

    id: int
    root: Path
    argv: list[str]
    dataset_config: Path | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"case {self.id} ({self.root}): {' '.join(self.argv)}; " + "; ".join(self.notes)


class Writer:
    """Small PNGs, each size encoded once."""

    def __init__(self) -> None:
        self._png: dict[tuple[int, int], bytes] = {}

    def image(self, path: Path, size: tuple[int, int]) -> None:
        if size not in self._png:
            buffer = io.BytesIO()
            Image.new("RGB", size, (size[0] % 256, size[1] % 256, 90)).save(buffer, format="PNG")
            self._png[size] = buffer.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._png[size])


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.choice(SIZES), rng.choice(SIZES)


def _folder(rng: random.Random, writer: Writer, folder: Path, count: int) -> list[tuple[str, tuple[int, int]]]:
    """`count` images, about half with a caption file."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        size = _size(rng)
        writer.image(folder / f"img_{i:02d}.png", size)
        if rng.random() < 0.5:
            (folder / f"img_{i:02d}.txt").write_text(f"token{rng.randrange(3)}, thing {i}\n")
        made.append((str(folder / f"img_{i:02d}.png"), size))
    return made


class Settings:
    """Dataset settings of one case, each put at random in a subset, a dataset, [general] or the arguments."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.general: dict[str, Any] = {}
        self.args: dict[str, Any] = {}

    def place(self, key: str, value: Any, tables: list[dict[str, Any]], folder_mode: bool = False) -> None:
        """Put `key = value` in one of `tables` (subsets first, the dataset last), [general], or the command
        line (dataset-level keys never go into a subset)."""
        where = self.rng.random()
        if folder_mode or where < 0.2:
            self.args[ARG_NAME.get(key, key)] = value
        elif where < 0.45:
            self.general[key] = value
        else:
            self.rng.choice(tables[-1:] if key in DATASET_KEYS else tables)[key] = value

    def dataset_options(self, tables: list[dict[str, Any]], folder_mode: bool = False, captions: bool = True) -> None:
        """Resolution, batch, buckets, split and caption options: each set or left to sd-scripts' default."""
        rng = self.rng
        chosen = {
            "resolution": rng.choice(RESOLUTIONS) if rng.random() < 0.95 else None,
            "batch_size": rng.randint(1, 4),
            "enable_bucket": rng.random() < 0.7,
            "bucket_reso_steps": rng.choice((32, 64)),
            "min_bucket_reso": rng.choice((16, 48) if rng.random() < 0.15 else (32, 64, 64, 96)) if rng.random() < 0.9
            else None,
            "max_bucket_reso": rng.choice((160, 256, 512)) if rng.random() < 0.8 else None,
            "bucket_no_upscale": rng.random() < 0.35,
            "keep_tokens": rng.randint(0, 2),
            "shuffle_caption": rng.random() < 0.5,
            "flip_aug": rng.random() < 0.3,
            "caption_dropout_rate": rng.choice((0.0, 0.1, 0.5)),
            "caption_extension": ".txt" if captions else None,  # a DreamBooth key only
        }
        if rng.random() < 0.25:
            chosen["validation_split"] = rng.choice((0.1, 0.25, 0.5))
            if rng.random() < 0.5:
                chosen["validation_seed"] = rng.randrange(100)
        for key, value in chosen.items():
            if value is not None and not (value is False and key in STORE_TRUE):
                self.place(key, value, tables, folder_mode)


def _argv(args: dict[str, Any]) -> list[str]:
    out = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        elif isinstance(value, list):
            out += [f"--{key}", ",".join(map(str, value))]
        else:
            out += [f"--{key}", str(value)]
    return out


def _training_args(rng: random.Random) -> dict[str, Any]:
    """Steps or epochs, accumulation, save points, names and the seed."""
    args: dict[str, Any] = {}
    pick = rng.random()
    if pick < 0.5:
        args["max_train_steps"] = rng.randint(1, 120)
    elif pick < 0.92:
        args["max_train_epochs"] = rng.randint(1, 5)
    if rng.random() < 0.5:
        args["gradient_accumulation_steps"] = rng.randint(1, 3)
    if rng.random() < 0.4:
        args["save_every_n_steps"] = rng.randint(1, 40)
    save = rng.random()
    if save < 0.3:
        args["save_every_n_epochs"] = rng.randint(1, 3)
    elif save < 0.45:
        args["save_n_epoch_ratio"] = rng.randint(1, 3)
    if rng.random() < 0.3:
        args["output_name"] = f"lora{rng.randrange(10)}"
    if rng.random() < 0.8:
        args["seed"] = rng.randrange(1000)
    return args


def _dreambooth_subset(rng: random.Random, writer: Writer, root: Path, made: list[str]) -> dict[str, Any]:
    """A folder of images (sometimes empty, sometimes one an earlier subset already uses), maybe reg, maybe
    listed by a metadata_cache.json (cache_info)."""
    subset: dict[str, Any] = {}
    if made and rng.random() < 0.07:
        subset["image_dir"] = rng.choice(made)
    else:
        folder = root / f"sub{len(made)}"
        images = _folder(rng, writer, folder, rng.choice((1, 2, 3, 4, 5, 6, 8)) if rng.random() < 0.94 else 0)
        made.append(str(folder))
        subset["image_dir"] = str(folder)
        if rng.random() < 0.1:
            subset["cache_info"] = True
            if images and rng.random() < 0.7:  # a listing of some of the images, in its own order
                listed = rng.sample(images, rng.randint(1, len(images)))
                (folder / "metadata_cache.json").write_text(json.dumps(
                    {path: {"caption": "c", "resolution": list(size)} for path, size in listed}))
    if rng.random() < 0.25:
        subset["is_reg"] = True
    if rng.random() < 0.3:
        subset["class_tokens"] = "sks thing"
    if rng.random() < 0.85:
        subset["num_repeats"] = rng.choice((0, 1, 1, 2, 3, 5))
    return subset


def _metadata_subset(rng: random.Random, writer: Writer, root: Path, index: int) -> dict[str, Any]:
    """A fine-tuning subset: a JSON or JSONL metadata file naming images (relative to image_dir, or absolute),
    with or without their sizes."""
    folder = root / f"meta{index}"
    images = _folder(rng, writer, folder, rng.randint(0, 5))
    entries = []
    for path, size in images:
        entry: dict[str, Any] = {"image_path": Path(path).name if rng.random() < 0.7 else path, "caption": "c"}
        if rng.random() < 0.5:
            entry["image_size"] = list(size)
        entries.append(entry)
    if rng.random() < 0.3:
        meta = root / f"meta{index}.jsonl"
        meta.write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        meta = root / f"meta{index}.json"
        meta.write_text(json.dumps({e.pop("image_path"): e for e in entries}))
    subset: dict[str, Any] = {"metadata_file": str(meta), "image_dir": str(folder)}
    if rng.random() < 0.85:
        subset["num_repeats"] = rng.choice((0, 1, 2, 3))
    return subset


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _write_config(path: Path, general: dict[str, Any], datasets: list[dict[str, Any]]) -> None:
    lines = ["[general]"] + [f"{k} = {_toml(v)}" for k, v in general.items()]
    for dataset in datasets:
        lines += ["", "[[datasets]]"] + [f"{k} = {_toml(v)}" for k, v in dataset.items() if k != "subsets"]
        for subset in dataset["subsets"]:
            lines += ["", "  [[datasets.subsets]]"] + [f"  {k} = {_toml(v)}" for k, v in subset.items()]
    path.write_text("\n".join(lines) + "\n")


def _config_case(rng: random.Random, writer: Writer, root: Path, settings: Settings) -> Path:
    """1-3 datasets (DreamBooth or fine-tuning) of 1-3 subsets each."""
    datasets: list[dict[str, Any]] = []
    made: list[str] = []
    for d in range(rng.choice((1, 1, 2, 3))):
        dataset: dict[str, Any] = {}
        metadata = rng.random() < 0.2
        if metadata:
            dataset["subsets"] = [_metadata_subset(rng, writer, root, d * 10 + j) for j in range(rng.randint(1, 2))]
        else:
            dataset["subsets"] = [_dreambooth_subset(rng, writer, root, made) for _ in range(rng.randint(1, 3))]
        settings.dataset_options([*dataset["subsets"], dataset], captions=not metadata)
        datasets.append(dataset)
    config = root / "dataset.toml"
    _write_config(config, settings.general, datasets)
    return config


def _folder_case(rng: random.Random, writer: Writer, root: Path, settings: Settings) -> dict[str, Any]:
    """Folder mode: `<repeats>_<name>` folders (some with 0 repeats or no number), images directly in
    train_data_dir now and then, a reg_data_dir, or a fine-tuning `--in_json`."""
    train = root / "train"
    if rng.random() < 0.15:
        meta = _metadata_subset(rng, writer, root, 0)
        settings.dataset_options([{}], folder_mode=True, captions=False)
        return {"train_data_dir": meta["image_dir"], "in_json": meta["metadata_file"]}
    for i in range(rng.randint(1, 3)):
        name = rng.choice((f"{rng.choice((0, 1, 2, 3, 5))}_tok{i}", f"{rng.randint(1, 4)}_sks_thing{i}", f"x{i}"))
        _folder(rng, writer, train / name, rng.randint(0, 5))
    if rng.random() < 0.1:
        _folder(rng, writer, train, 2)  # images directly in train_data_dir: sd-scripts ignores them
    args: dict[str, Any] = {"train_data_dir": str(train)}
    if rng.random() < 0.35:
        _folder(rng, writer, root / "reg" / f"{rng.randint(1, 2)}_person", rng.randint(1, 6))
        args["reg_data_dir"] = str(root / "reg")
    settings.dataset_options([{}], folder_mode=True)
    return args


def _command_line(rng: random.Random, root: Path, args: dict[str, Any]) -> list[str]:
    """The arguments on the command line, or some of them in a training config TOML (`--config_file`, sections
    flattened by sd-scripts, the command line winning), as kohya_ss writes one."""
    if rng.random() < 0.7:
        return _argv(args)
    in_file = {k: v for k, v in args.items() if rng.random() < 0.8}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in in_file.items():
        if isinstance(value, list) or key == "resolution":  # a string there, as sd-scripts splits it
            value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        sections.setdefault(rng.choice(("model", "dataset_arguments", "training_arguments")), {})[key] = value
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in sections.items())
    (root / "train.toml").write_text(text)
    rest = {k: v for k, v in args.items() if k not in in_file}
    return ["--config_file", str(root / "train.toml")] + _argv(rest)


def generate(root: Path, seed: int, count: int) -> list[Case]:
    """`count` cases under `root`, the same ones for the same seed."""
    writer = Writer()
    cases = []
    for i in range(count):
        rng = random.Random(seed * 100_003 + i)
        case_root = root / f"case{i:04d}"
        case_root.mkdir(parents=True)
        settings = Settings(rng)
        if rng.random() < 0.2:
            args, config = _folder_case(rng, writer, case_root, settings), None
        else:
            config = _config_case(rng, writer, case_root, settings)
            args = {"dataset_config": str(config)}
        args.update(settings.args)
        args.update(_training_args(rng))
        cases.append(Case(i, case_root, _command_line(rng, case_root, args), config))
    return cases
