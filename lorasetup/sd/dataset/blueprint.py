"""The dataset as sd-scripts' BlueprintGenerator sees it (library/config_util.py): resolved settings, datasets and
subsets, and the images each subset loads.

Settings resolve subset -> dataset -> [general] -> training arguments -> argparse default, the first value that is
not None winning. Folder mode (`--train_data_dir` without a dataset config) is rebuilt the way
config_util.generate_dreambooth_subsets_config_by_subdirs builds it; a subset's image list follows
DreamBoothDataset.load_dreambooth_dir, a fine-tuning subset's FineTuningDataset's metadata reading.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine import files
from lorasetup.sd import facts as sdfacts
from lorasetup.sd.dataset.scan import DirScan, scan_dir
from lorasetup.sd.dataset.schema import (
    BOOL,
    FLOAT,
    FLOAT_PAIR,
    INT,
    INT_OR_PAIR,
    NUMBER,
    STR,
    TABLE,
    LoadedConfig,
    SchemaChecker,
    accepts,
    format_place,
)
from lorasetup.sd.trainargs import Setting as Value  # the one resolved-value class (subset ... default)
from lorasetup.sd.trainargs import TrainArgs

# argparse defaults of the dataset options (library/train_util.py add_dataset_arguments, train_network.py
# validation options), which every run's namespace carries, and the params dataclass defaults for keys that have
# no option (library/config_util.py DreamBoothSubsetParams etc.).
ARG_DEFAULTS: dict[str, Any] = {
    "caption_extension": sdfacts.DEFAULT_CAPTION_EXTENSION, "batch_size": 1, "num_repeats": 1,
    "shuffle_caption": False, "caption_separator": ",", "keep_tokens": 0, "keep_tokens_separator": "",
    "secondary_separator": None, "enable_wildcard": False, "caption_prefix": None, "caption_suffix": None,
    "color_aug": False, "flip_aug": False, "face_crop_aug_range": None, "random_crop": False, "resolution": None,
    "enable_bucket": False, "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64,
    "bucket_no_upscale": False, "token_warmup_min": 1, "token_warmup_step": 0, "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0, "cache_info": False,
    "alpha_mask": False, "validation_split": 0.0, "validation_seed": None,
    "is_reg": False, "class_tokens": None, "image_dir": None, "metadata_file": None, "conditioning_data_dir": None,
}
# Option names that differ from the config key (config_util.py ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME).
KEY_TO_ARG = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
KINDS: dict[str, str] = {
    "caption_extension": STR, "batch_size": INT, "num_repeats": INT, "shuffle_caption": BOOL,
    "caption_separator": STR, "keep_tokens": INT, "keep_tokens_separator": STR, "secondary_separator": STR,
    "enable_wildcard": BOOL, "caption_prefix": STR, "caption_suffix": STR, "color_aug": BOOL, "flip_aug": BOOL,
    "face_crop_aug_range": FLOAT_PAIR, "random_crop": BOOL, "resolution": INT_OR_PAIR, "enable_bucket": BOOL,
    "min_bucket_reso": INT, "max_bucket_reso": INT, "bucket_reso_steps": INT, "bucket_no_upscale": BOOL,
    "token_warmup_min": INT, "token_warmup_step": NUMBER, "caption_dropout_rate": NUMBER,
    "caption_dropout_every_n_epochs": INT, "caption_tag_dropout_rate": NUMBER, "cache_info": BOOL,
    "alpha_mask": BOOL, "validation_split": FLOAT, "validation_seed": INT, "is_reg": BOOL, "class_tokens": STR,
    "image_dir": STR, "metadata_file": STR, "conditioning_data_dir": STR, "custom_attributes": TABLE,
}
# Training-loop options and their argparse defaults (library/train_util.py add_training_arguments,



def _from_arg(name: str, kind: str, raw: Any) -> Any:
    """A training-argument value (typed from --config_file TOML, or a string from the command line) as the
    dataset layer will see it; None when it cannot be read as that kind (the args gate reports those)."""
    if raw is None:
        return None
    if kind == BOOL:  # argparse stores a real bool; a TOML string here stops sd-scripts' argparse sanitizer
        return raw if isinstance(raw, bool) else None
    if kind == INT and not isinstance(raw, (bool, float)):
        try:
            return int(raw)
        except (TypeError, ValueError):
            return None
    if kind in (FLOAT, NUMBER) and not isinstance(raw, bool):
        try:
            return float(raw) if kind == FLOAT else (raw if isinstance(raw, (int, float)) else float(raw))
        except (TypeError, ValueError):
            return None
    if kind == INT_OR_PAIR:  # train_util.prepare_dataset_args: "512" or "512,768" (a list there crashes)
        if isinstance(raw, (list, tuple, dict, bool, float)):
            return None
        try:
            parts = [int(p) for p in str(raw).split(",")]
        except ValueError:
            return None
        return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts) if len(parts) == 2 else None
    if kind == FLOAT_PAIR:
        try:
            pair = tuple(float(p) for p in str(raw).split(","))
        except ValueError:
            return None
        return pair if len(pair) == 2 else None
    return raw if kind != STR or isinstance(raw, str) else str(raw)


class Resolver:
    """Looks a setting up through config layers, the training arguments and the argparse default."""

    def __init__(self, layers: list[tuple[dict, str, str]], train_args: TrainArgs | None) -> None:
        self.layers = layers  # (table, place prefix, source), highest priority first
        self.train_args = train_args
        self._cache: dict[str, Value] = {}

    def __call__(self, name: str) -> Value:
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def get(self, name: str) -> Any:
        return self(name).value

    def _resolve(self, name: str) -> Value:
        kind = KINDS.get(name)
        for table, prefix, source in self.layers:
            value = table.get(name)
            if value is not None and (kind is None or accepts(kind, value)):
                if kind == INT_OR_PAIR:
                    value = (value, value) if isinstance(value, int) else tuple(value)
                return Value(value, f"{prefix}.{name}" if prefix else name, source)
        arg = KEY_TO_ARG.get(name, name)
        if self.train_args is not None and arg in self.train_args:
            value = _from_arg(arg, kind or STR, self.train_args.get(arg))
            if value is not None:
                return Value(value, self.train_args.place(arg), "args")
        return Value(ARG_DEFAULTS.get(name), "sd-scripts' default", "default")


@dataclass
class SubsetPlan:
    """One subset as sd-scripts will build it."""

    place: str
    kind: str  # dreambooth | finetuning | controlnet
    table: dict
    get: Resolver
    table_path: tuple = ()

    @property
    def is_reg(self) -> bool:
        return bool(self.get.get("is_reg")) and self.kind == "dreambooth"

    def path(self, key: str) -> Path | None:
        """A path setting as sd-scripts opens it: no `~` expansion, relative to the working directory."""
        raw = self.get.get(key)
        return Path(raw) if isinstance(raw, str) and raw else None


@dataclass
class DatasetPlan:
    place: str
    kind: str
    table: dict
    get: Resolver
    subsets: list[SubsetPlan] = field(default_factory=list)


@dataclass
class Plan:
    """The whole dataset setup: where it came from, its datasets, and notes for the person."""

    mode: str  # config | folder | none | custom
    datasets: list[DatasetPlan]
    config: LoadedConfig | None = None
    train_data_dir: Value | None = None
    notes: list[str] = field(default_factory=list)
    known_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # image sizes sd-scripts takes from a cache
    _scans: dict[str, DirScan] = field(default_factory=dict)
    _images: dict[int, list[str] | None] = field(default_factory=dict)

    @property
    def subsets(self) -> list[SubsetPlan]:
        return [s for d in self.datasets for s in d.subsets]

    def scan(self, directory: Path) -> DirScan:
        key = str(directory)
        if key not in self._scans:
            self._scans[key] = scan_dir(directory)
        return self._scans[key]


def build_plan(config: LoadedConfig | None, train_args: TrainArgs | None, checker: SchemaChecker) -> Plan:
    """The plan from a parsed dataset config, or from `train_data_dir`/`reg_data_dir` in folder mode."""
    if config is not None:
        return _plan_from_config(config, train_args, checker)
    if train_args is not None and train_args.get("dataset_class"):
        return Plan("custom", [], notes=[(f"{train_args.place('dataset_class')} names a custom dataset class; "
                                          "its data cannot be checked statically")])
    return _plan_from_folders(train_args, checker)


def _plan_from_config(config: LoadedConfig, train_args: TrainArgs | None, checker: SchemaChecker) -> Plan:
    data = config.data if isinstance(config.data, dict) else {}
    general: dict = data["general"] if isinstance(data.get("general"), dict) else {}
    raw_datasets: list = data["datasets"] if isinstance(data.get("datasets"), list) else []
    plan = Plan("config", [], config=config)
    for i, ds in enumerate(raw_datasets):
        if not isinstance(ds, dict):
            continue
        kind = checker.dataset_kind(ds)
        ds_place = format_place(("datasets", i))
        layers: list[tuple[dict, str, str]] = [(ds, ds_place, "dataset"), (general, "general", "general")]
        dataset = DatasetPlan(ds_place, kind or "dreambooth", ds, Resolver(layers, train_args))
        subsets: list = ds["subsets"] if isinstance(ds.get("subsets"), list) else []
        for j, sub in enumerate(subsets):
            if not isinstance(sub, dict):
                continue
            sub_kind = kind or ("finetuning" if "metadata_file" in sub else "dreambooth")
            place = format_place(("datasets", i, "subsets", j))
            dataset.subsets.append(SubsetPlan(place, sub_kind, sub,
                                              Resolver([(sub, place, "subset")] + layers, train_args),
                                              ("datasets", i, "subsets", j)))
        plan.datasets.append(dataset)
    if train_args is not None:
        ignored = [name for name in ("train_data_dir", "reg_data_dir", "in_json") if train_args.get(name)]
        if ignored:
            plan.notes.append(f"{', '.join(ignored)} in the training arguments are ignored: the dataset config wins")
    return plan


def _plan_from_folders(train_args: TrainArgs | None, checker: SchemaChecker) -> Plan:
    """config_util.generate_dreambooth_subsets_config_by_subdirs, or the one-subset fine-tuning config
    train_network.py builds when `in_json` is set."""
    if train_args is None or not train_args.get("train_data_dir"):
        return Plan("none", [])
    train_dir, reg_dir, in_json = (train_args.get(k) for k in ("train_data_dir", "reg_data_dir", "in_json"))
    plan = Plan("folder", [], train_data_dir=Value(train_dir, train_args.place("train_data_dir"), "args"))
    dataset = DatasetPlan("train_data_dir", "dreambooth", {}, Resolver([], train_args))
    plan.datasets.append(dataset)
    if in_json and checker.support.finetuning:
        table = {"image_dir": str(train_dir), "metadata_file": str(in_json)}
        dataset.kind = "finetuning"
        dataset.subsets.append(SubsetPlan(f"{train_args.place('train_data_dir')} + {train_args.place('in_json')}",
                                          "finetuning", table, Resolver([(table, "", "folder")], train_args)))
        return plan
    for base, is_reg in ((train_dir, False), (reg_dir if checker.support.dreambooth else None, True)):
        if base and isinstance(base, str) and Path(base).is_dir():
            _add_folder_subsets(plan, dataset, Path(base), is_reg, train_args)
    return plan


def _add_folder_subsets(plan: Plan, dataset: DatasetPlan, base: Path, is_reg: bool,
                        train_args: TrainArgs | None) -> None:
    """One subset per `<repeats>_<class tokens>` subfolder of `base`, in the order the folder lists them."""
    arg = "reg_data_dir" if is_reg else "train_data_dir"
    try:
        children = list(base.iterdir())  # unsorted, as sd-scripts iterates it
    except OSError as exc:
        plan.notes.append(f"{arg} {base}: cannot list it: {exc.strerror}")
        return
    for child in children:
        if not child.is_dir():
            continue
        tokens = child.name.split("_")
        try:
            repeats = int(tokens[0])
        except ValueError:
            plan.notes.append(f"{arg}: folder {child.name!r} is ignored: its name does not start with "
                              "<repeats>_ (sd-scripts: 'ignore directory without repeats')")
            continue
        if repeats < 1:
            plan.notes.append(f"{arg}: folder {child.name!r} is ignored: {repeats} repeats")
            continue
        table = {"image_dir": str(child), "num_repeats": repeats, "is_reg": is_reg,
                 "class_tokens": "_".join(tokens[1:])}
        place = f"{arg}/{child.name}"
        dataset.subsets.append(SubsetPlan(place, "dreambooth", table, Resolver([(table, place, "folder")], train_args)))


# ----------------------------------------------------------------------------- subset image lists

def subset_images(plan: Plan, subset: SubsetPlan) -> list[str] | None:
    """Image paths (as sd-scripts spells them) a DreamBooth/ControlNet subset loads; None when its folder is missing.

    With cache_info and an existing metadata_cache.json, sd-scripts takes the list from that file. The list is
    made once per plan; callers get their own copy."""
    key = id(subset)
    if key not in plan._images:
        plan._images[key] = _subset_images(plan, subset)
    found = plan._images[key]
    return list(found) if found is not None else None


def _subset_images(plan: Plan, subset: SubsetPlan) -> list[str] | None:
    image_dir = subset.get.get("image_dir")
    if not isinstance(image_dir, str) or not image_dir:
        return None
    if subset.get.get("cache_info"):
        cache = os.path.join(image_dir, "metadata_cache.json")
        cached = _cached_listing(plan, cache) if os.path.isfile(cache) else None
        if cached is not None:
            return cached
    scan = plan.scan(Path(image_dir))
    if scan.error:
        return None
    prefix = os.path.join(image_dir, "")
    return [prefix + name for name in scan.images + scan.image_named_dirs]


def _cached_listing(plan: Plan, cache: str) -> list[str] | None:
    """metadata_cache.json ({image path: {"caption", "resolution": [w, h]}}): its paths, in its order, and its
    sizes, which sd-scripts uses instead of reading the images (DreamBoothDataset.load_dreambooth_dir)."""
    try:
        metas = files.read_json(cache, files.DATA_LIMIT)
    except files.FileProblem:
        return None
    if not isinstance(metas, dict):
        return None
    for path, meta in metas.items():
        size = meta.get("resolution") if isinstance(meta, dict) else None
        if isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size):
            plan.known_sizes[path] = (size[0], size[1])
    return list(metas)


def finetune_entries(subset: SubsetPlan) -> tuple[dict[str, dict], str | None]:
    """metadata_file entries (JSON or JSONL) -> {image key: {"abs_path", "image_size"}}, or an error."""
    meta = subset.get.get("metadata_file")
    image_dir = subset.get.get("image_dir")
    try:
        text = files.read_text(meta, files.DATA_LIMIT)
        raw = _json_lines(meta, text) if str(meta).endswith(".jsonl") else files.parse_json(meta, text)
    except files.FileProblem as exc:
        if exc.kind == "missing":
            return {}, "metadata_file not found (sd-scripts stops with 'no metadata')"
        return {}, f"metadata_file unreadable: {exc.summary}"
    except (KeyError, TypeError, AttributeError) as exc:
        return {}, f"metadata_file unreadable: an entry without image_path ({type(exc).__name__}: {exc})"
    if not isinstance(raw, dict):
        return {}, "metadata_file is not a JSON object of image entries"
    out: dict[str, dict] = {}
    for key, entry in raw.items():
        entry = entry if isinstance(entry, dict) else {}
        if not os.path.isabs(key) and not image_dir:
            return {}, f"entry {key!r} is relative, so image_dir is required"
        out[key] = {"abs_path": key if os.path.isabs(key) else os.path.join(image_dir, key),
                    "image_size": entry.get("image_size")}
    return out, None


def _json_lines(meta: str, text: str) -> dict[str, dict]:
    """FineTuningDataset's .jsonl reading: one JSON object per line, keyed by its image_path."""
    raw = {}
    for number, line in enumerate(io.StringIO(text), 1):
        try:
            item = files.parse_json(meta, line)
        except files.FileProblem as exc:
            raise files.FileProblem(meta, exc.problem, exc.hint, kind=exc.kind, line=number) from None
        raw[item["image_path"]] = {"image_size": item.get("image_size")}
    return raw

