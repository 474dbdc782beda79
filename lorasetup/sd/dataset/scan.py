"""What sd-scripts will pick up from a dataset: resolved settings, image files, captions, and the step count.

Settings resolve as sd-scripts' BlueprintGenerator resolves them (library/config_util.py): subset -> dataset ->
[general] -> training arguments -> argparse default, the first value that is not None winning. Folder mode
(`--train_data_dir` without a dataset config) is rebuilt the way
config_util.generate_dreambooth_subsets_config_by_subdirs builds it. Image lists follow train_util.glob_images,
captions train_util.DreamBoothDataset.read_caption, and the step arithmetic DreamBoothDataset (reg balancing),
BaseDataset.make_buckets / BucketManager (buckets) and train_network.py (epochs, accumulation, processes, save points).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagesize

from lorasetup.sd import facts as sdfacts
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
# Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS); sd-scripts does not change it, so
# Image.open raises DecompressionBombError above twice this and warns above it.
PIL_MAX_PIXELS = 89_478_485
# What sd-scripts picks up only when an optional Pillow plugin imports (library/train_util.py).
PLUGIN_EXTENSIONS = {".avif": "pillow-avif-plugin", ".AVIF": "pillow-avif-plugin",
                     ".jxl": "pillow-jxl-plugin or jxlpy", ".JXL": "pillow-jxl-plugin or jxlpy"}
OTHER_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".jfif", ".psd", ".tga", ".svg")
NOT_CAPTIONS = ((".npz", ".json", ".safetensors", ".toml", ".db", ".ini")
                + tuple(e.lower() for e in sdfacts.IMAGE_EXTENSIONS))
WINDOWS = os.name == "nt"


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
    general = data.get("general") if isinstance(data.get("general"), dict) else {}
    raw_datasets = data.get("datasets") if isinstance(data.get("datasets"), list) else []
    plan = Plan("config", [], config=config)
    for i, ds in enumerate(raw_datasets):
        if not isinstance(ds, dict):
            continue
        kind = checker.dataset_kind(ds)
        ds_place = format_place(("datasets", i))
        layers = [(ds, ds_place, "dataset"), (general, "general", "general")]
        dataset = DatasetPlan(ds_place, kind or "dreambooth", ds, Resolver(layers, train_args))
        subsets = ds.get("subsets") if isinstance(ds.get("subsets"), list) else []
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
    get = (lambda name: train_args.get(name)) if train_args is not None else (lambda name: None)
    train_dir, reg_dir, in_json = get("train_data_dir"), get("reg_data_dir"), get("in_json")
    if not train_dir:
        return Plan("none", [])
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
        if not base or not isinstance(base, str):
            continue
        base_path = Path(base)
        if not base_path.is_dir():
            continue
        arg = "reg_data_dir" if is_reg else "train_data_dir"
        try:
            children = list(base_path.iterdir())  # unsorted, as sd-scripts iterates it
        except OSError as exc:
            plan.notes.append(f"{arg} {base_path}: cannot list it: {exc.strerror}")
            continue
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
            dataset.subsets.append(SubsetPlan(place, "dreambooth", table,
                                              Resolver([(table, place, "folder")], train_args)))
    return plan


# ----------------------------------------------------------------------------- directory listings

@dataclass
class DirScan:
    """One image folder as sd-scripts' glob sees it."""

    path: Path
    error: str | None = None
    images: list[str] = field(default_factory=list)        # names glob_images picks up, in its order
    image_named_dirs: list[str] = field(default_factory=list)  # picked up, but folders
    lookalikes: list[str] = field(default_factory=list)     # image files glob skips (.Jpg, .gif, ...)
    plugin_only: list[str] = field(default_factory=list)    # .avif / .jxl: only with a Pillow plugin
    files: set[str] = field(default_factory=set)            # regular files, for caption lookups
    extensions: dict[str, set[str]] = field(default_factory=dict)  # stem -> non-image extensions present


def _picked_up(name: str) -> bool:
    """glob.glob(dir/'*' + ext) for each IMAGE_EXTENSIONS entry: `*` skips dot-files; fnmatch is case-
    sensitive except on Windows."""
    if name.startswith("."):
        return False
    if WINDOWS:
        return name.lower().endswith(tuple(e.lower() for e in sdfacts.IMAGE_EXTENSIONS))
    return name.endswith(sdfacts.IMAGE_EXTENSIONS)


def scan_dir(directory: Path) -> DirScan:
    scan = DirScan(directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        scan.error = "does not exist"
        return scan
    except NotADirectoryError:
        scan.error = "is a file, not a folder"
        return scan
    except OSError as exc:
        scan.error = f"cannot be listed: {exc.strerror}"
        return scan
    lower_exts = {e.lower() for e in sdfacts.IMAGE_EXTENSIONS}
    for entry in entries:
        name = entry.name
        try:
            is_file = entry.is_file()
        except OSError:
            is_file = False
        stem, ext = os.path.splitext(name)
        if _picked_up(name):
            (scan.images if is_file or not entry.is_dir() else scan.image_named_dirs).append(name)
            continue
        if not is_file or name.startswith("."):
            continue
        scan.files.add(name)
        if ext in PLUGIN_EXTENSIONS:
            scan.plugin_only.append(name)
        elif ext.lower() in lower_exts or ext.lower() in OTHER_IMAGE_EXTENSIONS:
            scan.lookalikes.append(name)
        elif ext:
            scan.extensions.setdefault(stem, set()).add(ext)
    scan.images.sort()
    scan.lookalikes.sort()
    return scan


# ----------------------------------------------------------------------------- image headers

SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("png", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("jpeg", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("webp", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"),
    ("bmp", lambda h: h.startswith(b"BM")),
    ("gif", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
    ("tiff", lambda h: h[:4] in (b"II*\x00", b"MM\x00*")),
    ("avif", lambda h: h[4:12] in (b"ftypavif", b"ftypavis")),
    ("heic", lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"mif1", b"msf1")),
    ("jxl", lambda h: h.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "))),
)
EXTENSION_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".bmp": "bmp",
                    ".avif": "avif", ".jxl": "jxl"}
# imagesize >= 2 rotates by EXIF unless told not to; sd-scripts pins imagesize 1.4.1, which reports the stored size.
_IMAGESIZE_OPTIONS = {"exif_rotation": False} if "exif_rotation" in inspect.signature(imagesize.get).parameters else {}


@dataclass(frozen=True)
class ImageProbe:
    """What one image file's first and last bytes say."""

    size: tuple[int, int] | None
    fmt: str | None
    problem: str | None = None  # sd-scripts will crash on it
    warning: str | None = None


def probe_image(path: str) -> ImageProbe:
    """Header size (imagesize, as sd-scripts' get_image_size), content signature, and cheap truncation tests."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the `with fh:` below; open errors become results
    except IsADirectoryError:
        return ImageProbe(None, None, "is a folder named like an image")
    except OSError as exc:
        return ImageProbe(None, None, f"cannot be opened: {exc.strerror}")
    with fh:
        length = os.fstat(fh.fileno()).st_size
        if length == 0:
            return ImageProbe(None, None, "empty file (0 bytes)")
        head = fh.read(32)
        fmt = next((name for name, test in SIGNATURES if test(head)), None)
        if fmt is None:
            return ImageProbe(None, None, f"not an image Pillow can open (starts with {head[:8]!r})")
        tail = b""
        if fmt in ("png", "jpeg"):
            fh.seek(max(0, length - 1024))
            tail = fh.read()
    try:  # by path: imagesize's check for a file object costs more than a second open
        width, height = imagesize.get(path, **_IMAGESIZE_OPTIONS)
    except Exception:  # noqa: BLE001 - imagesize 1.x raises ValueError on a bad header
        width, height = -1, -1
    if fmt in ("heic",):
        return ImageProbe(None, fmt, "HEIC content: Pillow cannot open it without a plugin; convert it to JPEG/PNG")
    if width <= 0 or height <= 0:
        if fmt in ("avif", "jxl"):  # imagesize cannot read these; sd-scripts falls back to Pillow
            return ImageProbe(None, fmt)
        return ImageProbe(None, fmt, f"{fmt.upper()} header unreadable (corrupt or truncated)")
    if fmt == "png" and b"IEND" not in tail:
        return ImageProbe((width, height), fmt, "truncated PNG (no IEND chunk at the end)")
    if fmt == "webp" and int.from_bytes(head[4:8], "little") + 8 > length:
        return ImageProbe((width, height), fmt, "truncated WebP (shorter than its RIFF header says)")
    if width * height > 2 * PIL_MAX_PIXELS:
        return ImageProbe((width, height), fmt, f"{width}x{height} is over Pillow's decompression-bomb limit "
                          f"({2 * PIL_MAX_PIXELS} pixels): Image.open raises DecompressionBombError")
    warning = None
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        warning = "JPEG without an end marker: truncated, or trailing data after the image"
    elif width * height > PIL_MAX_PIXELS:
        warning = f"{width}x{height}: Pillow warns (DecompressionBombWarning) and it needs a lot of RAM"
    return ImageProbe((width, height), fmt, None, warning)


# ----------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class CaptionRead:
    """The caption sd-scripts will use for one image, or why it will crash or fall back."""

    path: str | None           # caption file found, if any
    text: str | None           # first line (or all lines with enable_wildcard), stripped; None = no file
    problem: str | None = None  # sd-scripts stops on it (empty file, not UTF-8)
    bom: bool = False


def caption_candidates(image_path: str, extension: str) -> list[str]:
    """train_util read_caption: `<path without ext><ext>`, then the same without the last four `_` fields
    (face-crop file names); the split is over the whole path string, as there."""
    base = os.path.splitext(image_path)[0]
    tokens = base.split("_")
    face = "_".join(tokens[:-4]) if len(tokens) >= 5 else base
    return [base + extension, face + extension]


def read_caption(image_path: str, extension: str, wildcard: bool, scan: DirScan | None) -> CaptionRead:
    """The caption read_caption finds for one image. With the folder's listing (`scan`) the usual candidate,
    next to the image, is looked up without a file-system call."""
    first, face = caption_candidates(image_path, extension)
    same_folder = scan is not None and os.sep not in extension and not (os.altsep and os.altsep in extension)
    for candidate in (first, face) if face != first else (first,):
        if same_folder and candidate is first:
            exists = candidate[candidate.rfind(os.sep) + 1:] in scan.files
        else:
            exists = os.path.isfile(candidate)
        if exists:
            return _caption_file(candidate, wildcard)
    return CaptionRead(None, None)


def _caption_file(path: str, wildcard: bool) -> CaptionRead:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return CaptionRead(path, None, f"cannot be read: {exc.strerror}")
    if not raw:
        return CaptionRead(path, None, "empty caption file: sd-scripts stops with 'caption file is empty'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return CaptionRead(path, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at {exc.start}): "
                           "sd-scripts stops with 'illegal char in file (not UTF-8)'")
    # text-mode readlines(): universal newlines, split on "\n" only
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    if wildcard:
        caption = "\n".join(line.strip() for line in lines if line.strip() != "")
    else:
        caption = lines[0].strip()
    return CaptionRead(path, caption, None, caption.startswith("\ufeff"))


def token_keeper(subset: SubsetPlan) -> Callable[[str], tuple[str, ...]]:
    """caption -> the tokens that keep their place when shuffling (BaseDataset.process_caption)."""
    get = subset.get.get
    prefix, suffix = get("caption_prefix"), get("caption_suffix")
    separator = get("caption_separator") or ","
    keep_sep = get("keep_tokens_separator")
    keep = get("keep_tokens") or 0

    def kept(caption: str) -> tuple[str, ...]:
        if prefix:
            caption = prefix + " " + caption
        if suffix:
            caption = caption + " " + suffix
        caption = caption.split("\n")[0]
        if keep_sep and keep_sep in caption:
            fixed = caption.split(keep_sep, 1)[0]
            return tuple(t.strip() for t in fixed.split(separator) if t.strip())
        tokens = [t.strip() for t in caption.strip().split(separator)]
        return tuple(tokens[:keep]) if keep > 0 else ()
    return kept


def shuffles(subset: SubsetPlan) -> bool:
    """keep_tokens only matters when captions are reordered or cut (BaseDataset.process_caption)."""
    get = subset.get.get
    return bool(get("shuffle_caption")) or (get("token_warmup_step") or 0) > 0 \
        or (get("caption_tag_dropout_rate") or 0) > 0


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
        if os.path.isfile(cache):
            try:
                with open(cache, encoding="utf-8") as fh:
                    return list(json.load(fh).keys())
            except (OSError, ValueError, AttributeError):
                pass
    scan = plan.scan(Path(image_dir))
    if scan.error:
        return None
    prefix = os.path.join(image_dir, "")
    return [prefix + name for name in scan.images + scan.image_named_dirs]


def finetune_entries(subset: SubsetPlan) -> tuple[dict[str, dict], str | None]:
    """metadata_file entries (JSON or JSONL) -> {image key: {"abs_path", "image_size"}}, or an error."""
    meta = subset.get.get("metadata_file")
    image_dir = subset.get.get("image_dir")
    try:
        with open(meta, encoding="utf-8") as fh:
            if str(meta).endswith(".jsonl"):
                raw = {}
                for line in fh:
                    item = json.loads(line)
                    raw[item["image_path"]] = {"image_size": item.get("image_size")}
            else:
                raw = json.load(fh)
    except FileNotFoundError:
        return {}, "metadata_file not found (sd-scripts stops with 'no metadata')"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"metadata_file unreadable: {exc}"
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


# ----------------------------------------------------------------------------- buckets

def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int, max_size: int,
                            divisible: int) -> list[tuple[int, int]]:
    """library/model_util.py make_bucket_resolutions."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


class Buckets:
    """BucketManager.select_bucket: the bucket resolution each image lands in."""

    def __init__(self, no_upscale: bool, max_reso: tuple[int, int], min_size: int | None, max_size: int | None,
                 steps: int | None, predefined: list[tuple[int, int]] | None = None) -> None:
        self.no_upscale, self.steps = no_upscale, steps
        self.max_area = max_reso[0] * max_reso[1]
        if predefined is None and not no_upscale:
            predefined = make_bucket_resolutions(max_reso, min_size, max_size, steps)
        self.resos = predefined or []
        self.reso_set = set(self.resos)
        self.ratios = [w / h for w, h in self.resos]

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[int, int]:
        aspect = width / height
        if not self.no_upscale:
            if (width, height) in self.reso_set:
                return (width, height)
            errors = [abs(r - aspect) for r in self.ratios]
            return self.resos[errors.index(min(errors))]  # numpy argmin: the first minimum
        if width * height > self.max_area:
            rw = math.sqrt(self.max_area * aspect)
            rh = self.max_area / rw
            bw = self._round(rw)
            bh_w = self._round(bw / aspect)
            ar_w = bw / bh_w
            bh = self._round(rh)
            bw_h = self._round(bh * aspect)
            ar_h = bw_h / bh
            resized = (bw, int(bw / aspect + 0.5)) if abs(ar_w - aspect) < abs(ar_h - aspect) \
                else (int(bh * aspect + 0.5), bh)
        else:
            resized = (width, height)
        return (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)


# ----------------------------------------------------------------------------- steps

@dataclass
class DatasetCount:
    place: str
    batch_size: int
    train_samples: int  # num train images * repeats
    reg_samples: int    # reg images * repeats, before balancing
    samples: int        # per epoch, after reg balancing
    batches: int
    buckets: dict[tuple[int, int], int]
    notes: list[str] = field(default_factory=list)


@dataclass
class StepPlan:
    datasets: list[DatasetCount]
    batches_per_epoch: int
    num_processes: int
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    saves: list[dict[str, Any]]
    exact: bool
    notes: list[str] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
            "batches_per_epoch": self.batches_per_epoch, "num_processes": self.num_processes,
            "gradient_accumulation_steps": self.grad_accum,
            "train_images_x_repeats": sum(d.train_samples for d in self.datasets),
            "reg_images_x_repeats": sum(d.reg_samples for d in self.datasets),
            "samples_per_epoch": sum(d.samples for d in self.datasets),
            "save_steps": sorted({s["step"] for s in self.saves}), "saves": self.saves, "exact": self.exact,
        }


class ImpossibleSteps(Exception):
    """sd-scripts will stop before the first step (no data, batch size 0, ...)."""


def count_dataset(plan: Plan, dataset: DatasetPlan, sizes: Callable[[Iterable[str]], dict[str, tuple[int, int]]]
                  ) -> DatasetCount:
    """Samples and batches of one dataset per epoch (DreamBoothDataset / FineTuningDataset + make_buckets).

    `sizes` maps image paths to header sizes; it is only called when buckets with batch_size > 1 need them."""
    get = dataset.get.get
    batch_size = get("batch_size")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ImpossibleSteps(f"{dataset.place}: batch_size {batch_size} (from {dataset.get('batch_size').place}) "
                              "must be at least 1")
    notes: list[str] = []
    image_repeats: dict[str, int] = {}   # image key -> repeats (BaseDataset.image_data)
    where: dict[str, str | tuple[int, int]] = {}  # image key -> file path, or the size its metadata gives
    train_samples = reg_samples = 0
    split = get("validation_split") or 0.0
    seed = get("validation_seed")
    random_split = False
    reg: list[list[Any]] = []
    seen: set[Any] = set()
    for subset in dataset.subsets:
        repeats = subset.get.get("num_repeats")
        if not isinstance(repeats, int) or repeats < 1:
            notes.append(f"{subset.place}: skipped by sd-scripts (num_repeats {repeats} is less than 1)")
            continue
        ident_key = "metadata_file" if subset.kind == "finetuning" else "image_dir"
        identity = subset.get.get(ident_key)
        if identity in seen:
            notes.append(f"{subset.place}: skipped by sd-scripts (same {ident_key} as an earlier subset)")
            continue
        if subset.kind == "finetuning":
            entries, error = finetune_entries(subset)
            if error or not entries:
                notes.append(f"{subset.place}: {error or 'no entries'}")
                continue
            seen.add(identity)
            train_samples += len(entries) * repeats
            for key, entry in entries.items():
                image_repeats[key] = repeats
                size = entry["image_size"]
                where[key] = tuple(size) if isinstance(size, list) and len(size) == 2 else entry["abs_path"]
            continue
        paths = subset_images(plan, subset)
        if paths and split > 0.0 and not subset.is_reg:
            if seed is None:
                random_split = True
            else:
                random.Random(seed).shuffle(paths)
            paths = paths[0:math.ceil(len(paths) * (1 - split))]
        if not paths:
            notes.append(f"{subset.place}: skipped by sd-scripts (no images)")
            continue
        seen.add(identity)
        if subset.is_reg:
            reg_samples += repeats * len(paths)
            reg.extend([path, repeats] for path in paths)
        else:
            train_samples += repeats * len(paths)
            for path in paths:
                image_repeats[path] = repeats
                where[path] = path
    if reg_samples:
        # DreamBoothDataset: reg images are registered in turn, then get one more repeat each in turn,
        # until they add up to the train samples.
        n, first = 0, True
        while n < train_samples:
            for info in reg:
                if first:
                    n += info[1]
                else:
                    info[1] += 1
                    n += 1
                image_repeats[info[0]] = info[1]
                where[info[0]] = info[0]
                if n >= train_samples:
                    break
            first = False
    buckets: dict[tuple[int, int], int] = {}
    if get("enable_bucket") and batch_size > 1 and image_repeats:
        if random_split:
            notes.append("validation_split without validation_seed picks a random train part each run: the "
                         "bucket counts (and so batches with batch_size > 1) can differ by a few")
        manager = _bucket_manager(dataset)
        found = sizes([w for w in where.values() if isinstance(w, str)])
        unknown = 0
        chosen: dict[tuple[int, int], tuple[int, int]] = {}  # image size -> bucket, computed once per size
        for key, repeats in image_repeats.items():
            size = where[key] if isinstance(where[key], tuple) else found.get(where[key])
            if not size or size[0] <= 0 or size[1] <= 0:
                unknown += 1
                continue
            reso = chosen.get(size)
            if reso is None:
                reso = chosen[size] = manager.select(*size)
            buckets[reso] = buckets.get(reso, 0) + repeats
        if unknown:
            notes.append(f"{unknown} images have no readable size (sd-scripts crashes on them); they are left "
                         "out of the bucket counts")
    else:
        buckets[tuple(get("resolution") or (0, 0))] = sum(image_repeats.values())
    batches = sum(math.ceil(count / batch_size) for count in buckets.values())
    return DatasetCount(dataset.place, batch_size, train_samples, reg_samples, sum(image_repeats.values()),
                        batches, buckets, notes)


def _bucket_manager(dataset: DatasetPlan) -> Buckets:
    """BaseDataset: min/max bucket reso are moved to multiples of bucket_reso_steps, then BucketManager."""
    get = dataset.get.get
    if get("resolution") is None:
        raise ImpossibleSteps(f"{dataset.place}: resolution is not set (sd-scripts: 'resolution is required')")
    resolution = tuple(get("resolution"))
    steps = get("bucket_reso_steps")
    if not isinstance(steps, int) or steps < 1:
        raise ImpossibleSteps(f"{dataset.place}: bucket_reso_steps {steps} must be a positive integer")
    min_b, max_b = get("min_bucket_reso"), get("max_bucket_reso")
    if min_b % steps:
        min_b -= min_b % steps
    if max_b % steps:
        max_b += steps - max_b % steps
    return Buckets(bool(get("bucket_no_upscale")), resolution, min_b, max_b, steps)


def step_arg(train_args: TrainArgs | None, name: str) -> Value:
    """A training-loop option with its place; strings from the command line are read as integers."""
    setting = train_args.setting(name) if train_args is not None else None
    default = setting.value if setting is not None and setting.source == "default" else \
        sdfacts.TRAINING_DEFAULTS[name]  # the checkout's argparse default, else the facts table's
    if train_args is None or name not in train_args or train_args.get(name) is None:
        return Value(default, "sd-scripts' default", "default")
    raw = train_args.get(name)
    if name in ("output_name", "save_model_as"):
        return Value(str(raw), train_args.place(name), "args")
    try:
        if isinstance(raw, (bool, float)):
            raise TypeError
        return Value(int(raw), train_args.place(name), "args")
    except (TypeError, ValueError):
        return Value(default, f"default ({train_args.place(name)} = {raw!r} is not an integer)", "default")


def plan_steps(counts: list[DatasetCount], train_args: TrainArgs | None, num_processes: int,
               exact: bool = True) -> StepPlan:
    """train_network.py: steps per epoch, total steps, epochs, and where checkpoints are written."""
    batches = sum(c.batches for c in counts)
    if batches == 0:
        only_reg = sum(c.reg_samples for c in counts) > 0
        raise ImpossibleSteps(("only regularization images (is_reg) and no training images" if only_reg else
                               "no images with repeats >= 1 anywhere") + ": sd-scripts logs 'No data found. Please "
                              "verify arguments' and exits 0 without training")
    accum = step_arg(train_args, "gradient_accumulation_steps")
    if accum.value < 1:
        raise ImpossibleSteps(f"gradient_accumulation_steps {accum.value} ({accum.place}) must be at least 1")
    g = accum.value
    epochs_arg = step_arg(train_args, "max_train_epochs")
    steps_arg = step_arg(train_args, "max_train_steps")
    notes: list[str] = []
    if epochs_arg.value is not None:
        total = epochs_arg.value * math.ceil(batches / num_processes / g)
        notes.append(f"max_train_epochs = {epochs_arg.value} ({epochs_arg.place}) sets the steps"
                     + (f"; max_train_steps ({steps_arg.place}) is overridden" if steps_arg.source == "args" else ""))
    else:
        total = steps_arg.value
        if steps_arg.source == "default":
            notes.append(f"neither max_train_steps nor max_train_epochs is set: sd-scripts' default is {total} steps")
    per_epoch = math.ceil(math.ceil(batches / num_processes) / g)
    if total < 1:
        raise ImpossibleSteps(f"{total} training steps "
                              f"({epochs_arg.place if epochs_arg.value is not None else steps_arg.place})")
    epochs = math.ceil(total / per_epoch)
    saves = _save_points(train_args, total, per_epoch, epochs, notes)
    return StepPlan(counts, batches, num_processes, g, per_epoch, total, epochs, saves, exact, notes)


def _save_points(train_args: TrainArgs | None, total: int, per_epoch: int, epochs: int,
                 notes: list[str]) -> list[dict[str, Any]]:
    """Step saves (global_step % N == 0), epoch saves (every N epochs but the last), and the final file."""
    ext = "." + str(step_arg(train_args, "save_model_as").value)
    name = step_arg(train_args, "output_name").value
    every_steps = step_arg(train_args, "save_every_n_steps")
    every_epochs = step_arg(train_args, "save_every_n_epochs").value
    ratio = step_arg(train_args, "save_n_epoch_ratio").value
    if ratio is not None and ratio > 0:
        every_epochs = math.floor(epochs / ratio) or 1
    saves: list[dict[str, Any]] = []
    if every_steps.value is not None:
        if every_steps.value < 1:
            raise ImpossibleSteps(f"save_every_n_steps = {every_steps.value} ({every_steps.place}): "
                                  "global_step % 0 crashes at the first step")
        for step in range(every_steps.value, total + 1, every_steps.value):
            saves.append({"step": step, "kind": "step", "file": f"{name or 'at'}-step{step:08d}{ext}"})
    if every_epochs is not None and every_epochs > 0:
        for epoch in range(every_epochs, epochs, every_epochs):
            saves.append({"step": epoch * per_epoch, "kind": "epoch", "file": f"{name or 'epoch'}-{epoch:06d}{ext}"})
    saves.sort(key=lambda s: (s["step"], s["kind"]))
    saves.append({"step": total, "kind": "final", "file": f"{name or 'last'}{ext}"})
    if every_steps.value is not None and every_steps.value > total:
        notes.append(f"save_every_n_steps = {every_steps.value} is more than the {total} steps: no step saves")
    return saves


def read_num_processes(accelerate_config: Path | None) -> tuple[int, str]:
    """`num_processes:` of the accelerate config file lorasetup was pointed at; 1 otherwise."""
    if accelerate_config is None:
        return 1, "default (one process)"
    try:
        for line in accelerate_config.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "num_processes" and value.strip().isdigit():
                return max(1, int(value.strip())), f"{accelerate_config.name} num_processes"
    except OSError:
        pass
    return 1, "default (one process)"
