"""The run's dataset as sd-scripts will see it, computed once per run (Context.memo): the parsed config, the
sanitizer's errors, the plan of subsets and images, the image header probes and the step plan. Shared by the
dataset gate, the smoke run's ETA and the run commands."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed
from lorasetup.sd.accelconfig import find_config
from lorasetup.sd.dataset.blueprint import Plan, build_plan, finetune_entries, subset_images
from lorasetup.sd.dataset.scan import ImageProbe, probe_image
from lorasetup.sd.dataset.schema import (
    ConfigSyntaxError,
    LoadedConfig,
    SchemaChecker,
    SchemaError,
    load_config,
    read_schema,
    sanitizer_support,
    train_arg_names,
)
from lorasetup.sd.dataset.steps import ImpossibleSteps, StepPlan, count_datasets, plan_steps
from lorasetup.sd.distributed import launch_plan
from lorasetup.sd.trainargs import TrainArgs, path_setting, train_args


def train_args_or_none(ctx: Context) -> TrainArgs | None:
    """The training arguments, or None when their config file is unreadable (the args gate reports that)."""
    try:
        return train_args(ctx)
    except CheckFailed:
        return None


def entry_script(ctx: Context) -> Path | None:
    root = ctx.target.sd_scripts
    return root / ctx.target.script if root is not None else None


def config_path(ctx: Context) -> Path | None:
    """The Target's dataset config, else the training arguments' `dataset_config`."""
    try:
        return path_setting(ctx, "dataset_config", "dataset_config")
    except CheckFailed:
        return None


def schema_checker(ctx: Context) -> SchemaChecker:
    def build() -> SchemaChecker:
        args = train_args_or_none(ctx)
        support = sanitizer_support(entry_script(ctx), lambda name: bool(args and args.on(name)))
        root = ctx.target.sd_scripts
        tables, origin = read_schema(root / "library" / "config_util.py" if root else None)
        return SchemaChecker(support, tables, train_arg_names(root, entry_script(ctx)), origin)
    return ctx.memo("dataset:checker", build)


def loaded_config(ctx: Context) -> LoadedConfig | None:
    """The parsed dataset config; None in folder mode. Raises ConfigSyntaxError (cached)."""
    def load() -> LoadedConfig | None:
        path = config_path(ctx)
        return load_config(path) if path is not None else None
    return ctx.memo("dataset:config", load)


def schema_errors(ctx: Context) -> list[SchemaError]:
    """The sanitizer's errors for the dataset config (none in folder mode); raises ConfigSyntaxError."""
    def validate() -> list[SchemaError]:
        loaded = loaded_config(ctx)
        return schema_checker(ctx).validate(loaded.data, loaded.fmt, loaded.layout) if loaded is not None else []
    return ctx.memo("dataset:errors", validate)


def dataset_plan(ctx: Context) -> Plan:
    return ctx.memo("dataset:plan",
                    lambda: build_plan(loaded_config(ctx), train_args_or_none(ctx), schema_checker(ctx)))


def image_paths(plan: Plan) -> list[str]:
    paths: list[str] = []
    for subset in plan.subsets:
        if subset.kind == "finetuning":
            entries, _ = finetune_entries(subset)
            paths.extend(e["abs_path"] for e in entries.values() if os.path.exists(e["abs_path"]))
        else:
            paths.extend(subset_images(plan, subset) or [])
    return paths


def _probe_all(ctx: Context) -> dict[str, ImageProbe]:
    return {path: probe_image(path) for path in dict.fromkeys(image_paths(dataset_plan(ctx)))}


def image_probes(ctx: Context) -> dict[str, ImageProbe]:
    """Header probes of every image the plan loads, once per run."""
    return ctx.memo("dataset:probes", lambda: _probe_all(ctx))


def prefetch_image_probes(ctx: Context) -> None:
    """Read the image headers in the background while earlier gates run."""
    ctx.prefetch("dataset:probes", lambda: _probe_all(ctx))


def compute_steps(ctx: Context) -> StepPlan:
    """The run's step plan (raises ImpossibleSteps); shared by dataset.steps and the smoke gate's ETA."""
    def run() -> StepPlan:
        plan = dataset_plan(ctx)
        probes: dict[str, ImageProbe] | None = None

        def sizes(paths_: Iterable[str]) -> dict[str, tuple[int, int] | None]:
            nonlocal probes
            if probes is None:
                probes = image_probes(ctx)
            out: dict[str, tuple[int, int] | None] = {}
            for p in paths_:
                probe = probes.get(p) or probe_image(p)
                if probe.size:
                    out[p] = probe.size
                elif probe.problem:
                    out[p] = None
            return out
        args = train_args_or_none(ctx)
        processes = launch_plan(ctx.target, find_config(ctx.target).path).num_processes
        return plan_steps(count_datasets(plan, sizes, args), args, processes)
    return ctx.memo("dataset:steps", run)


def dataset_step_plan(ctx: Context) -> dict[str, Any] | None:
    """The step plan as a dict (total_steps, steps_per_epoch, save_steps, ...), or None when it cannot be made."""
    try:
        return compute_steps(ctx).data()
    except (ImpossibleSteps, ConfigSyntaxError, CheckFailed):
        return None
