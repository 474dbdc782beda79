"""`lorasetup init [DIR]`: from a folder of images to a checked setup in one command.

It reads the folder (kohya's `<repeats>_<name>` folders or plain folders of captioned images), finds the checkout,
venv, device and base model, writes dataset.toml and lorasetup.toml (never over existing files unless --force,
which backs them up), then runs the preflight and prints the step plan. Both files are verified before they are
written: they read back with tomllib to exactly the intended values, the dataset config passes the dataset.schema
check of this checkout, and lorasetup.toml loads as a Target. Choices are flags; a terminal gets one question.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorasetup.checks import all_checks, by_id
from lorasetup.engine.context import Context
from lorasetup.engine.fileedit import backup
from lorasetup.engine.files import resolved
from lorasetup.engine.report import err, exit_code, render_result, summary_line, use_color
from lorasetup.engine.result import FixError, Result, Status
from lorasetup.engine.runner import Runner, run_one, select
from lorasetup.engine.target import ConfigError, Target, load_target, tomllib
from lorasetup.initsetup import Setup, discover, render_config, train_args
from lorasetup.sd.dataset.layout import (
    Finding,
    Layout,
    Options,
    choose_resolution,
    dataset_data,
    read_layout,
    render_dataset,
)
from lorasetup.sd.dataset.plan import compute_steps
from lorasetup.sd.dataset.schema import ConfigSyntaxError
from lorasetup.sd.dataset.steps import ImpossibleSteps, StepPlan
from lorasetup.sd.facts import TRAINING_DEFAULTS
from lorasetup.sd.modelfamily import FAMILY_LABELS

DATASET_NAME = "dataset.toml"
CONFIG_NAME = "lorasetup.toml"
MARK = {"error": "✗", "warn": "!", "info": "·"}


def add_init_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="the dataset folder (default: here)")
    p.add_argument("--out", type=Path, help="where to write dataset.toml and lorasetup.toml (default: DIR)")
    p.add_argument("--repeats", type=int, default=10, help="repeats of plain training folders (default 10; "
                   "<repeats>_<name> folders say their own)")
    p.add_argument("--reg-repeats", type=int, default=1, help="repeats of plain reg folders (default 1)")
    p.add_argument("--caption-extension", metavar="EXT", help="the caption files' extension when they disagree")
    p.add_argument("--resolution", type=int, help="training resolution (default: by model family, at most what "
                   "most images reach)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--flip-aug", action="store_true", help="train on mirrored images too (only for symmetric "
                   "subjects)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train this many epochs")
    length.add_argument("--steps", type=int, help="train this many steps (default: whole epochs reaching "
                        f"sd-scripts' default of {TRAINING_DEFAULTS['max_train_steps']})")
    p.add_argument("--saves", type=int, default=4, help="LoRA files written during the run, the last at the "
                   "end (default 4)")
    p.add_argument("--force", action="store_true", help="replace existing files (they are backed up first)")
    p.add_argument("--dry-run", action="store_true", help="print both files, write nothing")
    p.add_argument("--yes", action="store_true", help="do not ask before writing")


@dataclass
class Drafts:
    """Both files' text, what they were checked against, and the run's step plan."""

    dataset: str
    config: str
    plan: StepPlan
    schema: Result


def init_command(args: argparse.Namespace, flags: dict[str, Any], extra: list[str]) -> int:
    """Exit 0: written and the preflight passed; 1: the folder or the preflight has a problem (or the person
    said no); 2: bad flags or files in the way."""
    _check_flags(args, flags)
    root = resolved(Path(args.dir).expanduser())
    out = resolved(args.out.expanduser()) if args.out else root
    paths = (out / DATASET_NAME, out / CONFIG_NAME)
    in_the_way = [p for p in paths if p.exists()]
    if in_the_way and not (args.force or args.dry_run):
        raise ConfigError(f"{' and '.join(map(str, in_the_way))} already exist{'s' if len(in_the_way) == 1 else ''}: "
                          "nothing written. Pass --force to replace (backups are kept), --out DIR to write "
                          "elsewhere, or --dry-run to see what init would write")
    options = Options(args.repeats, args.reg_repeats, args.caption_extension, skip=(out / "output",))
    err(f"lorasetup init {root}")
    layout = read_layout(root, options)
    if layout.errors:
        _show_findings(layout.findings)
        err(f"\nnothing written: fix the {len(layout.errors)} problem(s) marked ✗, then run lorasetup init again")
        return 1
    # flags, LORASETUP_* and --config over discovery; never the lorasetup.toml this command may replace
    setup = discover(load_target(flags, cwd=root, config=args.config, search=False), root)
    drafts = _drafts(args, layout, setup, extra)
    _show_summary(layout, setup, drafts)
    if drafts.schema.status not in (Status.OK, Status.WARN):
        err(render_result(drafts.schema, verbose=True))
        err("\nnothing written: the dataset config lorasetup drafted does not pass dataset.schema (a lorasetup bug; "
            "please report it with the lines above)")
        return 1
    if args.dry_run:
        for path, text in zip(paths, (drafts.dataset, drafts.config)):
            print(f"# ---- {path}\n{text}")
        err("dry run: nothing written")
        return 0
    if not _confirm(args, paths):
        err("nothing written")
        return 1
    for path, text in zip(paths, (drafts.dataset, drafts.config)):
        _write(path, text)
    return _preflight(paths[1], args.verbose, drafts.plan)


def _check_flags(args: argparse.Namespace, flags: dict[str, Any]) -> None:
    if flags.get("dataset_config"):
        raise ConfigError("init writes the dataset config itself: drop --dataset-config (use --out to choose where)")
    for name in ("repeats", "reg_repeats", "batch_size", "saves", "epochs", "steps", "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    ext = args.caption_extension
    if ext is not None and (not ext.startswith(".") or len(ext) < 2):
        raise ConfigError(f"--caption-extension {ext!r}: give it with its dot, e.g. .txt")


def _drafts(args: argparse.Namespace, layout: Layout, setup: Setup, extra: list[str]) -> Drafts:
    """Render both files, read them back, check the dataset config, and compute the step plan from them."""
    sizes = [s for f in layout.train for s in f.sizes]
    family = "sd2-v" if setup.family == "sd2" and setup.v_prediction else setup.family
    resolution, why = (args.resolution, "--resolution") if args.resolution else choose_resolution(sizes, family)
    data = dataset_data(layout, resolution, args.batch_size, args.flip_aug)
    notes = _dataset_notes(layout, data, why)
    header = [f"Written by `lorasetup init` for {layout.root}.", "Check it with `lorasetup doctor` in this folder."]
    dataset_text = render_dataset(data, notes, header)
    _read_back(DATASET_NAME, dataset_text, data)
    with tempfile.TemporaryDirectory(prefix="lorasetup-init-") as tmp:
        draft = Path(tmp) / DATASET_NAME
        draft.write_text(dataset_text, encoding="utf-8")
        target = replace(setup.target, dataset_config=draft, train_args=list(extra), sources={})
        with Context(target) as ctx:
            schema = run_one(ctx, by_id()["dataset.schema"])
            per_epoch = _steps(ctx).steps_per_epoch
        total = (args.steps or per_epoch * (args.epochs or
                                            math.ceil(TRAINING_DEFAULTS["max_train_steps"] / per_epoch)))
        run_args = train_args(setup, total, args.saves, extra)
        config_text = render_config(setup, DATASET_NAME, run_args, header[:1] + [
            "`lorasetup doctor` (here) checks the setup; `lorasetup train` runs it."])
        config = Path(tmp) / CONFIG_NAME
        config.write_text(config_text, encoding="utf-8")
        loaded = load_target(cwd=Path(tmp), config=config, environ={})
        if loaded.train_args != run_args or loaded.dataset_config != draft.resolve():
            raise ConfigError(f"internal error: the drafted {CONFIG_NAME} does not read back as written")
        with Context(replace(loaded, dataset_config=draft)) as ctx:
            plan = _steps(ctx)
    return Drafts(dataset_text, config_text, plan, schema)


def _steps(ctx: Context) -> StepPlan:
    try:
        return compute_steps(ctx)
    except (ImpossibleSteps, ConfigSyntaxError) as exc:
        raise ConfigError(f"the drafted dataset gives no steps: {exc}") from None


def _read_back(name: str, text: str, data: Any) -> None:
    """The rendered text must parse to exactly the intended values (a check of the renderer, not of the input)."""
    if tomllib.loads(text) != data:
        raise ConfigError(f"internal error: the drafted {name} does not read back as written")


def _dataset_notes(layout: Layout, data: dict[str, Any], why: str) -> dict[str, str]:
    notes = {"datasets[0].resolution": why}
    if data["general"].get("keep_tokens"):
        triggers = sorted({f.trigger for f in layout.train if f.trigger})
        notes["general.keep_tokens"] = "captions start with the trigger " + ", ".join(map(repr, triggers))
    for j, folder in enumerate(layout.folders):
        captions = f"{folder.captioned} captions" if folder.captioned else "no captions"
        kind = "regularization " if folder.is_reg else ""
        notes[f"datasets[0].subsets[{j}]"] = f"{folder.rel}: {len(folder.scan.images)} {kind}images, {captions}"
        notes[f"datasets[0].subsets[{j}].num_repeats"] = folder.repeats_from
    return notes


def step_line(plan: StepPlan) -> str:
    """`460 steps per epoch; 920 steps = 2 epochs; saves at 230, 460, 690, 920`."""
    saves = ", ".join(str(s) for s in sorted({s["step"] for s in plan.saves}))
    return (f"{plan.steps_per_epoch} steps per epoch; {plan.total_steps} steps = {plan.epochs} "
            f"epoch{'s' if plan.epochs != 1 else ''}; saves at {saves}")


def _show_findings(findings: list[Finding]) -> None:
    for f in findings:
        err(f"{MARK[f.level]} {f.where}: {f.text}")
        if f.fix:
            err(f"    fix: {f.fix}")


def _show_summary(layout: Layout, setup: Setup, drafts: Drafts) -> None:
    err(f"\ndataset ({len(layout.folders)} folder{'s' if len(layout.folders) != 1 else ''}):")
    for folder in layout.folders:
        captions = (f"{folder.captioned} {folder.caption_ext} captions" if folder.captioned else "no captions")
        trigger = f", trigger {folder.trigger!r}" if folder.trigger else ""
        uncaptioned = folder.captioned < len(folder.scan.images)
        tokens = f", class tokens {folder.class_tokens!r}" if folder.class_tokens and uncaptioned else ""
        repeats = f"{folder.repeats} repeat{'s' if folder.repeats != 1 else ''}"
        err(f"  {folder.rel:<24} {len(folder.scan.images)} {'reg ' if folder.is_reg else ''}images x {repeats} "
            f"({folder.repeats_from}), {captions}{trigger}{tokens}")
    t = setup.target
    err("setup:")
    for key, value in (("kohya_root", t.kohya_root), ("python", t.python), ("device", t.device),
                       ("base_model", t.base_model), ("script", t.script)):
        source = setup.sources.get(key)
        family = f", {FAMILY_LABELS[setup.family]}" if key == "base_model" and setup.family else ""
        err(f"  {key:<12} {value if value is not None else '(not found)'}"
            + (f"  ({source}{family})" if source else ""))
    _show_findings(layout.findings + setup.findings)
    err(f"plan: {step_line(drafts.plan)}")


def _confirm(args: argparse.Namespace, paths: tuple[Path, Path]) -> bool:
    """One question, only on a terminal: never with --yes, in CI, or when stdin is not a terminal."""
    if args.yes or os.environ.get("CI") or not sys.stdin.isatty():
        return True
    replacing = " (replacing the existing ones; backups are kept)" if any(p.exists() for p in paths) else ""
    sys.stderr.write(f"\nwrite {paths[0]} and {paths[1].name}{replacing}? [Y/n] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.endswith("\n") and answer.strip().lower() in ("", "y", "yes")  # end of input means no


def _write(path: Path, text: str) -> None:
    """Write atomically (temp file + rename); an existing file is backed up first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            err(f"backed up {path} to {backup(path)}")
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except FixError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write it: {exc.strerror}") from None
    err(f"wrote {path}")


def _preflight(config: Path, verbose: bool, plan: StepPlan) -> int:
    """The doctor's preflight on what was written, as `lorasetup doctor` in that folder will see it."""
    err(f"\npreflight (what `lorasetup doctor` in {config.parent} sees):")
    target: Target = load_target(cwd=config.parent, config=config)
    checks = all_checks()
    color = use_color(sys.stderr)
    hints: set[str] = set()
    start = time.perf_counter()
    with Context(target, verbose=verbose) as ctx:
        results = Runner(ctx, checks).run(select(checks, tags={"preflight"}),
                                          on_result=lambda r: err(render_result(r, verbose, color, shown_hints=hints)))
    err("\n" + summary_line(results, time.perf_counter() - start))
    steps = next((r for r in results if r.check_id == "dataset.steps" and r.status is Status.OK), None)
    err(f"step plan: {step_line(plan)}" + ("" if steps else " (dataset.steps did not confirm it)"))
    failed = exit_code(results)
    err("next: " + (f"fix what is marked above, then `lorasetup doctor` in {config.parent}" if failed else
                    f"cd {config.parent} && lorasetup doctor --smoke (5 real steps), then lorasetup train"))
    return failed
