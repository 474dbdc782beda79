"""The largest bucket the dataset really produces: where a run needs the most memory.

sd-scripts (train_util.BaseDataset.make_buckets) puts each image in the bucket BucketManager selects for its
size, or at `resolution` without bucketing; a batch is batch_size images of one bucket. The step that needs the
most memory is the one with the most pixels per batch: batch_size x the largest bucket's area, over all
datasets. The memory estimate sizes its activations there, and the smoke run trains on those images.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.tomledit import toml_key, toml_value
from lorasetup.sd.dataset.blueprint import DatasetPlan, Plan, finetune_entries, subset_images
from lorasetup.sd.dataset.buckets import unusable
from lorasetup.sd.dataset.plan import dataset_plan, image_probes, loaded_config
from lorasetup.sd.dataset.steps import ImpossibleSteps, Shape, dataset_shapes


@dataclass
class LargestBucket:
    """The bucket of the biggest batch: its dataset, batch size, resolution and the images that land in it."""

    place: str
    batch_size: int
    resolution: tuple[int, int]  # (width, height)
    images: dict[int, list[str]] = field(default_factory=dict)  # subset index in its dataset -> image paths
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)  # every bucket of that dataset -> images
    samples: int = 0  # images x repeats over every dataset (what --cache_latents keeps)
    dataset: DatasetPlan | None = field(default=None, repr=False, compare=False)

    @property
    def pixels(self) -> int:
        return self.batch_size * self.resolution[0] * self.resolution[1]


def _subset_paths(plan: Plan, dataset: DatasetPlan) -> list[tuple[int, str, tuple[int, int] | None, int]]:
    """(subset index, image path, size from metadata or None, repeats) for every image of a dataset."""
    out = []
    for index, subset in enumerate(dataset.subsets):
        repeats = subset.get.get("num_repeats")
        repeats = repeats if isinstance(repeats, int) and repeats > 0 else 1
        if subset.kind == "finetuning":
            entries, _ = finetune_entries(subset)
            for entry in entries.values():
                size = entry["image_size"]
                known = tuple(size) if isinstance(size, list) and len(size) == 2 else None
                out.append((index, entry["abs_path"], known, repeats))
        else:
            out += [(index, path, None, repeats) for path in subset_images(plan, subset) or []]
    return out


def dataset_largest(plan: Plan, dataset: DatasetPlan, shape: Shape,
                    size_of: Callable[[str], tuple[int, int] | None]) -> LargestBucket | None:
    """The largest bucket of one dataset (None when it has no image with a readable size)."""
    batch = shape.batch_size.value if isinstance(shape.batch_size.value, int) and shape.batch_size.value > 0 else 1
    found: dict[tuple[int, int], dict[int, list[str]]] = {}
    samples = 0
    for index, path, known, repeats in _subset_paths(plan, dataset):
        size = known or plan.known_sizes.get(path) or size_of(path)
        if not size or size[0] <= 0 or size[1] <= 0:
            continue
        reso = shape.buckets.select(*size) if shape.buckets else shape.resolution
        if unusable(reso):
            continue  # sd-scripts crashes on it; the dataset gate says so
        found.setdefault(reso, {}).setdefault(index, []).append(path)
        samples += repeats
    if not found:
        return None
    largest = max(found, key=lambda r: r[0] * r[1])
    counts = {reso: sum(len(paths) for paths in by_subset.values()) for reso, by_subset in found.items()}
    return LargestBucket(dataset.place, batch, largest, found[largest], counts, samples, dataset)


def largest_bucket(ctx: Context) -> LargestBucket | None:
    """The run's largest batch over every dataset, once per run; None without readable images. Raises
    ImpossibleSteps when a dataset's bucket settings cannot work (the dataset gate says why)."""
    def compute() -> LargestBucket | None:
        plan = dataset_plan(ctx)
        probes = image_probes(ctx)

        def size_of(path: str) -> tuple[int, int] | None:
            probe = probes.get(path)
            return probe.size if probe else None
        best: LargestBucket | None = None
        total = 0
        for dataset, shape in zip(plan.datasets, dataset_shapes(plan)):
            found = dataset_largest(plan, dataset, shape, size_of)
            if found is not None:
                total += found.samples
                best = found if best is None or found.pixels > best.pixels else best
        if best is not None:
            best.samples = total
        return best
    return ctx.memo("dataset:largest-bucket", compute)


# ---- a dataset config of the largest bucket alone (the smoke run trains there) ----------------------------

def _link(source: Path, dest: Path) -> None:
    """A symlink where the OS allows one (Windows without developer mode does not), else a copy."""
    try:
        dest.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, dest)


def _link_image(image: str, folder: Path) -> None:
    """The image and the files sd-scripts reads beside it: captions (`<stem>.*`) and cached latents
    (`<stem>_<w>x<h>*.npz`)."""
    source = Path(image)
    for sibling in source.parent.glob(f"{source.stem}*"):
        rest = sibling.name[len(source.stem):]
        if sibling.is_file() and (rest.startswith(".") or (rest.startswith("_") and rest.endswith(".npz"))):
            if not (folder / sibling.name).exists():
                _link(sibling, folder / sibling.name)


def _subset_table(table: dict[str, Any], images: list[str], folder: Path, batch: int, train: bool) -> dict:
    """A subset's own settings with image_dir pointing at `folder`, enough repeats for a full batch."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        _link_image(image, folder)
    out = {k: v for k, v in table.items() if k not in ("cache_info",)}
    out["image_dir"] = str(folder)
    raw = table.get("num_repeats")
    repeats: int = raw if isinstance(raw, int) and raw > 0 else 1
    out["num_repeats"] = max(repeats, math.ceil(batch / len(images)))
    if train:
        out["is_reg"] = False  # only reg images land in this bucket; sd-scripts needs a train subset
    return out


def largest_bucket_config(ctx: Context, bucket: LargestBucket, dest: Path) -> tuple[Path | None, str]:
    """Write a dataset config under `dest` whose only images are those of the largest bucket, with the run's
    own settings, so every step of a short run trains there. (None, why) when the run needs none (every image
    is in that bucket) or it cannot be made (folder mode, fine-tuning metadata)."""
    (width, height), count = bucket.resolution, sum(len(p) for p in bucket.images.values())
    where = f"{bucket.batch_size} x {width}x{height}"
    if len(bucket.buckets) <= 1 and len(dataset_plan(ctx).datasets) <= 1:
        return None, f"every step runs at the largest bucket ({where}): the dataset has no other"
    loaded = loaded_config(ctx)
    dataset = bucket.dataset
    if loaded is None or dataset is None or any(s.kind != "dreambooth" for s in dataset.subsets):
        return None, (f"the steps run at random buckets; the largest ({where}) is met only by chance (a "
                      "largest-bucket dataset config is made for DreamBooth-style dataset configs only)")
    has_train = any(not dataset.subsets[i].is_reg for i in bucket.images)
    subsets = [_subset_table(dataset.subsets[i].table, paths, dest / f"subset{i}", bucket.batch_size,
                             not has_train and dataset.subsets[i].is_reg)
               for i, paths in sorted(bucket.images.items())]
    general = loaded.data.get("general") if isinstance(loaded.data.get("general"), dict) else None
    table = {k: v for k, v in dataset.table.items() if k != "subsets"}
    path = dest / "largest-bucket-dataset.toml"
    path.write_text(render_config(general, table, subsets), encoding="utf-8")
    return path, (f"every step runs at the largest bucket ({where}): a dataset config of its {count} "
                  f"image(s) ({path.name}, the run's own settings)")


def render_config(general: dict | None, dataset: dict, subsets: list[dict]) -> str:
    """A dataset config TOML: [general], one [[datasets]] and its [[datasets.subsets]]."""
    def table(values: dict) -> list[str]:
        return [f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items()]
    lines = ["# written by lorasetup for a smoke run at the largest bucket", ""]
    if general:
        lines += ["[general]", *table(general), ""]
    lines += ["[[datasets]]", *table(dataset), ""]
    for subset in subsets:
        lines += ["[[datasets.subsets]]", *table(subset), ""]
    return "\n".join(lines)


__all__ = ["ImpossibleSteps", "LargestBucket", "dataset_largest", "largest_bucket", "largest_bucket_config"]
