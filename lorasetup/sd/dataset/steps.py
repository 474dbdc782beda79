"""The step plan: samples per dataset (DreamBoothDataset / FineTuningDataset: subsets, repeats, validation split,
reg balancing), batches per bucket (BaseDataset.make_buckets), and train_network.py's epochs, accumulation,
processes and save points."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.sd.dataset.blueprint import DatasetPlan, Plan, Value, finetune_entries, subset_images
from lorasetup.sd.dataset.buckets import Buckets
from lorasetup.sd.trainargs import TrainArgs

# add_sd_saving_arguments; train_network.py --save_model_as).
STEP_ARG_DEFAULTS: dict[str, Any] = {
    "max_train_steps": 1600, "max_train_epochs": None, "gradient_accumulation_steps": 1,
    "save_every_n_steps": None, "save_every_n_epochs": None, "save_n_epoch_ratio": None,
    "output_name": None, "save_model_as": "safetensors",
}


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
    default = STEP_ARG_DEFAULTS[name]
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
            notes.append("neither max_train_steps nor max_train_epochs is set: sd-scripts' default is 1600 steps")
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
