"""The step plan: samples per dataset (DreamBoothDataset / FineTuningDataset: subsets, repeats, validation split,
reg balancing), batches per bucket (BaseDataset.make_buckets), and train_network.py's epochs, accumulation,
processes and save points.

The order follows sd-scripts: every Dataset's __init__ (its assertions), then each one's make_buckets, then
train_network.py's "No data found". Any input the replay cannot carry through, because sd-scripts itself
stops or crashes on it, raises ImpossibleSteps with the reason; nothing else is raised.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lorasetup.sd import facts as sdfacts
from lorasetup.sd.dataset.blueprint import (
    DatasetPlan,
    Plan,
    Resolver,
    SubsetPlan,
    Value,
    finetune_entries,
    subset_images,
)
from lorasetup.sd.dataset.buckets import Buckets, adjust_min_max, unusable
from lorasetup.sd.trainargs import TrainArgs

# Training-loop options and their argparse defaults (library/train_util.py add_training_arguments,
# add_sd_saving_arguments; train_network.py --save_model_as).
SHOWN_IMAGES = 8  # images named in a bucket failure's details
# image path -> its size; None: a size sd-scripts cannot read; absent: one only a Pillow plugin or a cache gives
Sizes = Callable[[Iterable[str]], dict[str, tuple[int, int] | None]]


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
    exact: bool = True  # False when the bucket counts depend on a random validation split


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


@dataclass(frozen=True)
class SettingChange:
    """A dataset setting sd-scripts crashes on, and the value it would not crash on (None: no value of this
    setting helps; the hint says what does)."""

    dataset: DatasetPlan
    key: str
    current: Value
    wanted: int | None


class ImpossibleSteps(Exception):
    """sd-scripts will stop before the first step (no data, batch size 0, a crash while it makes the buckets).

    `details` and `hint` say more where one line cannot; `changes` are settings a fix may set."""

    def __init__(self, message: str, details: list[str] | None = None, hint: str | None = None,
                 changes: list[SettingChange] | None = None) -> None:
        super().__init__(message)
        self.details = details or []
        self.hint = hint
        self.changes = changes or []


# ----------------------------------------------------------------------------- each Dataset's __init__

@dataclass(frozen=True)
class Shape:
    """A dataset's batch size, resolution and buckets as its Dataset object holds them after __init__."""

    batch_size: Value
    resolution: tuple[int, int]
    buckets: Buckets | None  # None: enable_bucket is off, every image goes to one bucket at the resolution


def dataset_shapes(plan: Plan) -> list[Shape]:
    """Every dataset's shape, checked as sd-scripts checks them: all __init__ assertions first, then the
    min_bucket_reso crash of make_buckets (which sd-scripts hits before it looks at any image)."""
    shapes = [_shape(dataset) for dataset in plan.datasets]
    crashes = [c for c in map(_min_bucket_crash, plan.datasets) if c is not None]
    if crashes:
        raise _min_bucket_failure(crashes)
    return shapes


def _shape(dataset: DatasetPlan) -> Shape:
    get = dataset.get
    resolution = get("resolution")
    if resolution.value is None:
        raise ImpossibleSteps(f"{dataset.place}: resolution is not set (sd-scripts: 'resolution is required')")
    width, height = resolution.value
    if width < 1 or height < 1:
        raise ImpossibleSteps(f"{dataset.place}: resolution {width}x{height} ({resolution.place}) must be positive")
    if not get.get("enable_bucket"):
        return Shape(get("batch_size"), (width, height), None)
    steps = get.get("bucket_reso_steps")
    if not isinstance(steps, int) or steps < 1:
        raise ImpossibleSteps(f"{dataset.place}: bucket_reso_steps {steps} must be a positive integer")
    low, high = get("min_bucket_reso"), get("max_bucket_reso")
    lo, hi = adjust_min_max(low.value, high.value, steps)
    if min(width, height) < lo:
        raise ImpossibleSteps(f"{dataset.place}: min_bucket_reso {low.value} ({low.place}) is above the resolution's "
                              f"short side {min(width, height)} ({resolution.place}); sd-scripts stops with "
                              "'min_bucket_reso must be equal or less than resolution'")
    if max(width, height) > hi:
        raise ImpossibleSteps(f"{dataset.place}: max_bucket_reso {high.value} ({high.place}) is below the resolution's "
                              f"long side {max(width, height)} ({resolution.place}); sd-scripts stops with "
                              "'max_bucket_reso must be equal or greater than resolution'")
    return Shape(get("batch_size"), (width, height),
                 Buckets(bool(get.get("bucket_no_upscale")), (width, height), lo, hi, steps))


def _min_bucket_crash(dataset: DatasetPlan) -> SettingChange | None:
    """make_bucket_resolutions starts at min_bucket_reso rounded down to a multiple of bucket_reso_steps and
    divides by it: below one step that is 0 (ZeroDivisionError). bucket_no_upscale skips that function."""
    get = dataset.get
    if not get.get("enable_bucket") or get.get("bucket_no_upscale"):
        return None
    steps, low = get.get("bucket_reso_steps"), get("min_bucket_reso")
    if adjust_min_max(low.value, 0, steps)[0] >= 1:
        return None
    return SettingChange(dataset, "min_bucket_reso", low, steps if steps <= min(get.get("resolution")) else None)


def _min_bucket_failure(crashes: list[SettingChange]) -> ImpossibleSteps:
    lines = []
    for c in crashes:
        steps = c.dataset.get("bucket_reso_steps")
        rounded = adjust_min_max(c.current.value, 0, steps.value)[0]
        lines.append(f"{c.dataset.place}: min_bucket_reso {c.current.value} ({c.current.place}) is below "
                     f"bucket_reso_steps {steps.value} ({steps.place}): sd-scripts rounds it down to {rounded} and "
                     "divides by it while it makes the buckets (ZeroDivisionError in make_bucket_resolutions)")
    first = crashes[0]
    steps_value = first.dataset.get.get("bucket_reso_steps")
    if first.wanted is not None:
        hint = (f"set min_bucket_reso to a multiple of bucket_reso_steps, at least one step: min_bucket_reso = "
                f"{first.wanted} (it was {first.current.value}, from {first.current.place})")
    else:
        hint = (f"bucket_reso_steps {steps_value} is larger than the resolution's short side "
                f"{min(first.dataset.get.get('resolution'))}: lower bucket_reso_steps (to 64, or 32 for SDXL "
                "scripts) or raise resolution, then set min_bucket_reso to a multiple of it")
    return ImpossibleSteps(lines[0], lines[1:], hint, [c for c in crashes if c.wanted is not None])


# ----------------------------------------------------------------------------- the images each Dataset registers

@dataclass
class Samples:
    """What a Dataset registers (BaseDataset.image_data): repeats per image key and where its size comes from
    (a file to read, or the size a metadata file gives)."""

    repeats: dict[str, int] = field(default_factory=dict)
    where: dict[str, str | tuple[int, int]] = field(default_factory=dict)
    train: int = 0
    reg: int = 0
    reg_images: list[list[Any]] = field(default_factory=list)  # [path, repeats], in registration order
    random_split: bool = False
    exact: bool = True  # False when some images could not be put in a bucket
    notes: list[str] = field(default_factory=list)


def dataset_samples(plan: Plan, dataset: DatasetPlan, rng: random.Random | None) -> Samples:
    """DreamBoothDataset / FineTuningDataset.__init__: subsets in order, skipping those with repeats below 1,
    a folder (or metadata file) already loaded, or no images; then reg balancing."""
    samples = Samples()
    seen: set[Any] = set()
    for subset in dataset.subsets:
        repeats = subset.get.get("num_repeats")
        if not isinstance(repeats, int) or repeats < 1:
            samples.notes.append(f"{subset.place}: skipped by sd-scripts (num_repeats {repeats} is less than 1)")
            continue
        ident_key = "metadata_file" if subset.kind == "finetuning" else "image_dir"
        identity = subset.get.get(ident_key)
        if identity in seen:
            samples.notes.append(f"{subset.place}: skipped by sd-scripts (same {ident_key} as an earlier subset)")
            continue
        if subset.kind == "finetuning":
            added = _add_metadata(samples, subset, repeats)
        else:
            added = _add_folder(plan, dataset, subset, repeats, samples, rng)
        if added:
            seen.add(identity)
    _balance_reg(plan, samples)
    return samples


def _add_metadata(samples: Samples, subset: SubsetPlan, repeats: int) -> bool:
    """FineTuningDataset: every metadata entry, its size from the metadata when it has one."""
    entries, error = finetune_entries(subset)
    if error:
        raise ImpossibleSteps(f"{subset.place}: {error}")
    unsized = [e["abs_path"] for e in entries.values() if e["image_size"] is None and not _on_disk(e["abs_path"])]
    if unsized:
        raise ImpossibleSteps(
            f"{subset.place}: {len(unsized)} metadata entries name a missing image and give no image_size (first: "
            f"{unsized[0]}): sd-scripts reads each one's size while it makes the buckets and stops with "
            "FileNotFoundError", hint="add the images, remove those entries, or give their image_size")
    if not entries:
        samples.notes.append(f"{subset.place}: skipped by sd-scripts (no entries in its metadata_file)")
        return False
    samples.train += len(entries) * repeats
    for key, entry in entries.items():
        samples.repeats[key] = repeats
        size = entry["image_size"]
        samples.where[key] = tuple(size) if isinstance(size, list) and len(size) == 2 else entry["abs_path"]
    return True


def _on_disk(path: str) -> bool:
    """The image, or a latents cache (`<stem>...npz`) beside it that sd-scripts takes the size from."""
    if os.path.exists(path):
        return True
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    return os.path.isdir(folder or ".") and any(n.startswith(stem) and n.endswith(".npz")
                                                for n in os.listdir(folder or "."))


def _add_folder(plan: Plan, dataset: DatasetPlan, subset: SubsetPlan, repeats: int, samples: Samples,
                rng: random.Random | None) -> bool:
    """DreamBoothDataset.load_dreambooth_dir and registration: the training part of a validation split, reg
    images set aside for balancing."""
    paths = subset_images(plan, subset)
    split = dataset.get.get("validation_split") or 0.0
    if paths is not None and split > 0.0 and not subset.is_reg:
        if not paths:
            raise _empty_split(dataset, subset, split)
        if not _shuffle(paths, dataset.get.get("validation_seed"), rng):
            samples.random_split = True
        paths = paths[0:math.ceil(len(paths) * (1 - split))]
    if not paths:
        samples.notes.append(f"{subset.place}: skipped by sd-scripts (no images)")
        return False
    if subset.is_reg:
        samples.reg += repeats * len(paths)
        samples.reg_images.extend([path, repeats] for path in paths)
        return True
    samples.train += repeats * len(paths)
    for path in paths:
        samples.repeats[path] = repeats
        samples.where[path] = plan.known_sizes.get(path, path)
    return True


def _shuffle(paths: list[str], seed: int | None, rng: random.Random | None) -> bool:
    """split_train_val's shuffle, in place: by validation_seed, else by the run's random stream (set_seed(--seed)).
    False when neither is set: train_network.py then seeds the stream at random, and so is the split."""
    if seed is not None:
        random.Random(seed).shuffle(paths)
    elif rng is not None:
        rng.shuffle(paths)
    return seed is not None or rng is not None


def validation_images(plan: Plan, dataset: DatasetPlan, rng: random.Random | None) -> list[str]:
    """The images of the validation dataset config_util builds for 0 < validation_split <= 1, after every
    training dataset: DreamBoothDataset(is_training_dataset=False) loads each subset with one repeat (so also
    those training skips for num_repeats < 1), leaves reg subsets out and keeps the last round(n * split) of
    each split. Its make_buckets can crash on them too. A fine-tuning dataset's are its training images. With a
    random split (no validation_seed, no --seed) every image of a subset may be picked, so all count."""
    split = dataset.get.get("validation_split") or 0.0
    if not 0.0 < split <= 1.0 or dataset.kind != "dreambooth":
        return []
    seen: set[Any] = set()
    images: list[str] = []
    for subset in dataset.subsets:
        identity = subset.get.get("image_dir")
        paths = subset_images(plan, subset) if not subset.is_reg and identity not in seen else None
        if paths is None:
            continue
        if not paths:
            raise _empty_split(dataset, subset, split)
        known = _shuffle(paths, dataset.get.get("validation_seed"), rng)
        picked = paths[len(paths) - round(len(paths) * split):] if known else paths
        if picked:
            seen.add(identity)
            images += picked
    return images


def _empty_split(dataset: DatasetPlan, subset: SubsetPlan, split: float) -> ImpossibleSteps:
    return ImpossibleSteps(
        f"{subset.place}: no images in {subset.get.get('image_dir')} while validation_split = {split} "
        f"({dataset.get('validation_split').place}): sd-scripts' split_train_val crashes on an empty folder "
        "(ValueError: not enough values to unpack)", hint="put images in that folder or remove the subset")


def _balance_reg(plan: Plan, samples: Samples) -> None:
    """DreamBoothDataset: reg images are registered in turn, then get one more repeat each in turn, until they
    add up to the train samples (none are registered when there are no train samples)."""
    n, first = 0, True
    while samples.reg and n < samples.train:
        for info in samples.reg_images:
            if first:
                n += info[1]
            else:
                info[1] += 1
                n += 1
            samples.repeats[info[0]] = info[1]
            samples.where[info[0]] = plan.known_sizes.get(info[0], info[0])
            if n >= samples.train:
                break
        first = False


# ----------------------------------------------------------------------------- make_buckets

def bucket_counts(dataset: DatasetPlan, shape: Shape, samples: Samples, validation: list[str],
                  sizes: Sizes) -> dict[tuple[int, int], int]:
    """BaseDataset.make_buckets of the training dataset (and, for crashes, of its validation dataset, which has
    the same settings): samples per bucket. Image sizes matter only with buckets and batch_size > 1 (otherwise
    every sample is its own batch) or bucket_no_upscale, where each image's own size makes its bucket, and a side
    cut to 0 px stops the run."""
    total = sum(samples.repeats.values())
    if shape.buckets is None or not shape.buckets.no_upscale and shape.batch_size.value == 1:
        return {shape.resolution: total}
    keys = list(samples.repeats) + [p for p in validation if p not in samples.repeats]
    where = {key: samples.where.get(key, key) for key in keys}
    found = sizes([w for w in where.values() if isinstance(w, str)])
    buckets: dict[tuple[int, int], int] = {}
    chosen: dict[tuple[int, int], tuple[int, int]] = {}  # image size -> bucket, computed once per size
    crashed: list[tuple[str, Any, Any]] = []
    unknown = 0
    for key in keys:
        w = where[key]
        size = w if isinstance(w, tuple) else found.get(w, ())
        if size is None or size and (size[0] <= 0 or size[1] <= 0):
            crashed.append((key, None, None))
        elif not size:
            unknown += 1
        else:
            reso = chosen.get(size) or chosen.setdefault(size, shape.buckets.select(*size))
            if unusable(reso):
                crashed.append((key, size, reso))
            elif key in samples.repeats:
                buckets[reso] = buckets.get(reso, 0) + samples.repeats[key]
    if crashed:
        raise _bucket_failure(dataset, shape, crashed)
    if unknown:
        samples.notes.append(f"{unknown} images have a size only a Pillow plugin gives (AVIF, JXL); they are left "
                             "out of the bucket counts, which may be short")
        samples.exact = False
    return buckets


def _bucket_failure(dataset: DatasetPlan, shape: Shape, crashed: list[tuple[str, Any, Any]]) -> ImpossibleSteps:
    unreadable = [key for key, size, _ in crashed if size is None]
    if unreadable:
        n = len(unreadable)
        return ImpossibleSteps(
            f"{dataset.place}: {n} image{'s' if n > 1 else ''} without a readable size (first: "
            f"{os.path.basename(unreadable[0])}): their buckets cannot be counted, and sd-scripts crashes on "
            f"{'them' if n > 1 else 'it'}, while it makes the buckets or when it loads "
            f"{'them' if n > 1 else 'it'}", [f"{dataset.place}: {line}" for line in _shown(unreadable)],
            "replace or remove those images (dataset.images says what is wrong with each)")
    no_upscale = dataset.get("bucket_no_upscale")
    steps = dataset.get.get("bucket_reso_steps")
    lines = [f"{os.path.basename(key)} {s[0]}x{s[1]} -> bucket {b[0]}x{b[1]}" for key, s, b in crashed]
    n, (width, height) = len(crashed), shape.resolution
    message = (f"{dataset.place}: {n} image{'s' if n > 1 else ''} get{'' if n > 1 else 's'} a bucket with a 0-px "
               f"side (first: {lines[0]}): with bucket_no_upscale ({no_upscale.place}) a side that ends below "
               f"bucket_reso_steps {steps} is cut to 0 and sd-scripts crashes on it (ZeroDivisionError while it "
               "makes the buckets, or when it first loads the image)")
    hint = (f"remove or upscale these images (each side at least {steps} px, also once shrunk to the "
            f"{width}x{height} area), or set bucket_no_upscale = false ({no_upscale.place})")
    return ImpossibleSteps(message, [f"{dataset.place}: {line}" for line in _shown(lines)], hint)


def _shown(lines: list[str]) -> list[str]:
    n = len(lines)
    return lines[:SHOWN_IMAGES] + ([f"... and {n - SHOWN_IMAGES} more"] if n > SHOWN_IMAGES else [])


# ----------------------------------------------------------------------------- the plan

def count_datasets(plan: Plan, sizes: Sizes, train_args: TrainArgs | None) -> list[DatasetCount]:
    """Samples and batches of every dataset per epoch, in sd-scripts' order (raises ImpossibleSteps): each
    dataset's settings, the training datasets, then the validation datasets (the split's random stream runs on
    through them), then each one's make_buckets."""
    shapes = dataset_shapes(plan)
    seed = step_arg(train_args, "seed").value
    rng = random.Random(seed) if seed is not None else None  # set_seed(args.seed) before the datasets are made
    samples = [dataset_samples(plan, d, rng) for d in plan.datasets]
    validation = [validation_images(plan, d, rng) for d in plan.datasets]
    return [count_dataset(d, shape, registered, held, sizes)
            for d, shape, registered, held in zip(plan.datasets, shapes, samples, validation)]


def count_dataset(dataset: DatasetPlan, shape: Shape, samples: Samples, validation: list[str],
                  sizes: Sizes) -> DatasetCount:
    """One dataset's samples and batches per epoch (make_buckets over what its __init__ registered)."""
    batch_size = shape.batch_size
    if not samples.repeats:  # nothing to bucket or divide; the validation images still are
        bucket_counts(dataset, shape, samples, validation, sizes)
        return DatasetCount(dataset.place, batch_size.value, samples.train, samples.reg, 0, 0,
                            {shape.resolution: 0}, samples.notes)
    if not isinstance(batch_size.value, int) or batch_size.value < 1:
        raise ImpossibleSteps(f"{dataset.place}: batch_size {batch_size.value} (from {batch_size.place}) "
                              "must be at least 1")
    buckets = bucket_counts(dataset, shape, samples, validation, sizes)
    bucketed = shape.buckets is not None and batch_size.value > 1
    if samples.random_split and bucketed:
        samples.notes.append("validation_split without validation_seed or --seed picks a random train part each "
                             "run: the bucket counts (and so batches with batch_size > 1) can differ by a few")
    batches = sum(math.ceil(count / batch_size.value) for count in buckets.values())
    return DatasetCount(dataset.place, batch_size.value, samples.train, samples.reg, sum(samples.repeats.values()),
                        batches, buckets, samples.notes, samples.exact and not (samples.random_split and bucketed))


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


def plan_steps(counts: list[DatasetCount], train_args: TrainArgs | None, num_processes: int) -> StepPlan:
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
    exact = all(c.exact for c in counts)
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


def no_upscale_buckets(get: Resolver) -> Buckets | None:
    """The buckets of a subset's dataset under bucket_no_upscale (each image's own size, cut to steps), where
    an image can get a 0-px bucket; None when the settings do not make such buckets."""
    steps, resolution = get.get("bucket_reso_steps"), get.get("resolution")
    if not (get.get("enable_bucket") and get.get("bucket_no_upscale")) or not resolution:
        return None
    if not isinstance(steps, int) or steps < 1:
        return None
    return Buckets(True, resolution, None, None, steps)
