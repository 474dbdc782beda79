"""The dataset gate: the dataset config as sd-scripts validates it, the folders, images and captions it will
read, and the exact step count of the run.

The config comes from the Target (`dataset_config`) or the training arguments (`--dataset_config`); without
one, folder mode (`train_data_dir` with `<repeats>_<name>` subfolders) is checked. The five checks share one
parsed config and one scan per run (Context.memo), and each reports what it can even when another fails, so a
person sees every problem in one run.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.checks import check
from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.result import Fix, FixError, Result
from lorasetup.engine.tomledit import Change, TextRepair, edit_fix, try_edit_fix
from lorasetup.sd import argfix
from lorasetup.sd import facts as sdfacts
from lorasetup.sd.argfix import ArgChange
from lorasetup.sd.dataset.blueprint import DatasetPlan, Plan, SubsetPlan, Value, finetune_entries, subset_images
from lorasetup.sd.dataset.buckets import adjust_min_max, unusable
from lorasetup.sd.dataset.layout import REG_NAME
from lorasetup.sd.dataset.plan import (
    compute_steps,
    config_path,
    dataset_plan,
    dataset_step_plan,
    entry_script,
    image_probes,
    loaded_config,
    prefetch_image_probes,
    schema_checker,
    schema_errors,
    train_args_or_none,
)
from lorasetup.sd.dataset.scan import (
    EXTENSION_FORMAT,
    NOT_CAPTIONS,
    PLUGIN_EXTENSIONS,
    CaptionRead,
    DirScan,
    ImageProbe,
    probe_image,
    read_caption,
    shuffles,
    token_keeper,
)
from lorasetup.sd.dataset.schema import (
    PATH_KEYS,
    ConfigSyntaxError,
    LoadedConfig,
    SchemaChecker,
    SchemaError,
    parse_place,
)
from lorasetup.sd.dataset.steps import ImpossibleSteps, SettingChange, StepPlan, no_upscale_buckets

SHOWN = 12  # detail lines per finding before "... and N more"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ----------------------------------------------------------------------------- shared, once per run


def _usable_plan(ctx: Context) -> Plan | Result:
    """The plan, or the skip result a content check returns when there is nothing it can look at."""
    try:
        plan = dataset_plan(ctx)
    except ConfigSyntaxError as exc:
        return Result.skip(f"dataset config unreadable ({exc.message}); see dataset.schema")
    if plan.mode == "none":
        return Result.skip("no dataset configured", hint=_NO_DATASET_HINT)
    if plan.mode == "custom":
        return Result.skip(plan.notes[0])
    return plan


_NO_DATASET_HINT = ("point lorasetup at the dataset: `--dataset-config path/to/dataset.toml` (or dataset_config in "
                    "lorasetup.toml), or set dataset_config / train_data_dir in the training config")


def _capped(lines: list[str], limit: int = SHOWN) -> list[str]:
    return lines if len(lines) <= limit else lines[:limit] + [f"... and {len(lines) - limit} more"]


def _count_summary(items: list[str], noun: str) -> str:
    """One finding: the finding itself; several: how many, and the first."""
    if len(items) == 1:
        return items[0]
    return f"{len(items)} {noun}s (first: {items[0]})"


def _rest(items: list[str]) -> list[str]:
    """The detail lines under a `_count_summary` (a single finding is already the summary)."""
    return _capped(items) if len(items) > 1 else []


def _file_label(plan: Plan) -> str:
    return plan.config.path.name if plan.config else "folder mode"


# ----------------------------------------------------------------------------- edits (lorasetup.engine.tomledit)


def _file_fix(path: Path, changes: list[Change], description: str, safe: bool = True) -> Fix | None:
    """The guarded edit of the dataset config as one fix; None when it cannot be made safely."""
    if not changes:
        return None
    fix, _ = try_edit_fix(description, [(path, changes)], safe)
    return fix


# ----------------------------------------------------------------------------- dataset.schema

@check("dataset.schema", "the dataset config is what sd-scripts' ConfigSanitizer accepts for this script",
       fixes="renames an unknown key with one clear did-you-mean (--yes) and sets bucket_reso_steps to the script's "
             "divisor (safe), in the dataset TOML; a Windows path that breaks the TOML is rewritten as a literal "
             "string (safe)")
def schema(ctx: Context) -> Result:
    path = config_path(ctx)
    checker = schema_checker(ctx)
    try:
        loaded = loaded_config(ctx)
    except ConfigSyntaxError as exc:
        return _syntax_failure(path, exc)
    args = train_args_or_none(ctx)
    if loaded is None:
        plan = dataset_plan(ctx)
        if plan.mode == "none":
            return Result.skip("no dataset configured (no dataset config, no train_data_dir)", hint=_NO_DATASET_HINT)
        base = plan.train_data_dir
        if plan.mode == "custom" or base is None:
            return Result.skip(plan.notes[0])
        problems, _ = _dataset_rules(ctx, plan, checker)
        if problems:
            return Result.fail(_count_summary(problems, "problem"), _rest(problems), hint=_RULES_HINT)
        return Result.ok(f"folder mode: {base.value} ({base.place}); no dataset config to validate",
                         [f"rules of {checker.support.origin}"])
    errors = schema_errors(ctx)
    label = loaded.path.name
    details = [e.render(label) for e in errors]
    plan = dataset_plan(ctx)
    rule_problems, bucket = _dataset_rules(ctx, plan, checker)
    fixes = _schema_fix(loaded, errors, bucket)
    details += rule_problems
    info = [(f"schema: {checker.support.origin} ({checker.support.describe()}); tables from "
             f"{checker.origin}")]
    if args is not None and plan.notes:
        info += plan.notes
    data = {"errors": len(errors), "support": checker.support.describe()}
    if errors:
        first = errors[0]
        hint = (f"fix {label}{':' + str(first.line) if first.line else ''} {first.place}"
                + (f" ({first.hint})" if first.hint else "") + "; sd-scripts stops at start with "
                "'Invalid user config' and shows only the first of these")
        summary = details[0] if len(errors) == 1 else \
            f"{len(errors)} errors in {label} that sd-scripts rejects (first: {first.place}: {first.problem})"
        return Result.fail(summary, (details[1:] if len(errors) == 1 else details) + info, hint=hint, data=data,
                           fix=fixes)
    if rule_problems:
        return Result.fail(_count_summary(rule_problems, "problem"), _rest(rule_problems) + info, hint=_RULES_HINT,
                           fix=fixes, data=data)
    n_sub = len(plan.subsets)
    return Result.ok(f"{label}: valid for {ctx.target.script} ({len(plan.datasets)} dataset"
                     f"{'s' if len(plan.datasets) != 1 else ''}, {n_sub} subset{'s' if n_sub != 1 else ''})",
                     info, data=data)


_RULES_HINT = "sd-scripts stops after loading the model with an assertion; set the values named above"


def _schema_fix(loaded: LoadedConfig, errors: list[SchemaError], bucket: list[Change]) -> Fix | None:
    """Rename each unknown key that has one clear right name (value and comments kept; --yes, since the value
    then takes effect) and set bucket_reso_steps to the script's divisor (safe)."""
    if loaded.fmt != "toml":
        return None
    renames = []
    for error in errors:
        if error.rename_to is not None:
            where = parse_place(error.place)
            table = _data_at(loaded.data, where[:-1])
            if isinstance(table, dict) and error.rename_to not in table:
                renames.append(Change(where[:-1], str(where[-1]), rename_to=error.rename_to))
    parts = [f"set bucket_reso_steps to {bucket[0].value}, the divisor the script demands"] if bucket else []
    if renames:
        parts.append("rename " + ", ".join(f"{c.place()} to `{c.rename_to}`" for c in renames)
                     + " (the value then takes effect)")
    return _file_fix(loaded.path, bucket + renames, "; ".join(parts), safe=not renames)


def _data_at(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _syntax_failure(path: Path | None, exc: ConfigSyntaxError) -> Result:
    where = f"{path}" + (f":{exc.line}" if exc.line else "") + (f":{exc.column}" if exc.column else "")
    fmt = "JSON" if path and path.suffix.lower() == ".json" else "TOML"
    if exc.hint:  # the file cannot be read at all (not there, a pipe, not UTF-8, too large, nested too deep)
        return Result.fail(exc.message, hint=exc.hint)
    details, fix, hint = [], None, f"fix the syntax at {where}; sd-scripts cannot start without a readable config"
    if path is not None and fmt == "TOML" and exc.line:
        try:
            text = files.read_text(path)
        except files.FileProblem:
            text = ""
        repairs = _literal_edits_for_syntax(text)
        try:
            repair = TextRepair(path, repairs, text.encode("utf-8")) if repairs else None
        except FixError:
            repair = None  # the paths are not the only problem: the generic hint says where
        if repair is not None:
            details = [r[4] for r in repairs]
            hint = ("a Windows path in double quotes: backslashes start escapes there (\\U, \\x, \\t); write paths "
                    "in single quotes (TOML literal strings): image_dir = 'C:\\Users\\me\\img'")
            fix = edit_fix("rewrite backslash paths as TOML literal (single-quoted) strings", [repair])
    return Result.fail(f"{where}: not valid {fmt}: {exc.message}", details, hint=hint, fix=fix)


_BASIC_PATH_LINE = re.compile(
    r"""^([ \t]*([A-Za-z0-9_.-]+)[ \t]*=[ \t]*)"([^"'\n\r]*\\[^"'\n\r]*)"(?=[ \t]*(#|\r?$))""", re.MULTILINE)


def _literal_edits_for_syntax(text: str) -> list[tuple[int, int, str, Any, str]]:
    """Backslash paths in double quotes that break parsing (`\\U` needs hex digits), as literal strings."""
    repairs = []
    for m in _BASIC_PATH_LINE.finditer(text):
        if m.group(2).split(".")[-1] not in PATH_KEYS and m.group(2) not in PATH_KEYS:
            continue
        content = m.group(3).replace("\\\\", "\\")
        line = text.count("\n", 0, m.start()) + 1
        repairs.append((m.start(3) - 1, m.end(3) + 1, f"'{content}'", content,
                        f"line {line}: {m.group(2)} = '{content}'"))
    return repairs


def _dataset_rules(ctx: Context, plan: Plan, checker: SchemaChecker) -> tuple[list[str], list[Change]]:
    """What DreamBoothDataset / BaseDataset assert after the schema passes: resolution set, bucket_reso_steps
    divisible by the script's divisor, min/max bucket reso around the resolution. Values that come from the
    training arguments are the args gate's to report (args.rules), so they are left out here."""
    problems: list[str] = []
    changes: list[Change] = []
    seen: set[str] = set()
    script = entry_script(ctx)
    divisor = sdfacts.bucket_divisor(script) if script is not None else None
    label = _file_label(plan)
    for dataset in plan.datasets:
        get = dataset.get
        resolution = get("resolution")
        if dataset.kind in ("dreambooth", "controlnet") and resolution.value is None and dataset.subsets:
            problems.append(f"{label} {dataset.place}: resolution is not set in the dataset config or the training "
                            "arguments (sd-scripts: 'resolution is required'); add resolution = 512 to [general]")
            continue
        if not get("enable_bucket").value or resolution.value is None:
            continue
        steps = get("bucket_reso_steps")
        if not isinstance(steps.value, int) or steps.value < 1:
            continue
        if divisor and steps.value % divisor and steps.source in ("dataset", "general") and steps.place not in seen:
            seen.add(steps.place)  # a [general] value shared by several datasets is reported and fixed once
            problems.append(f"{label} {steps.place} = {steps.value}: {ctx.target.script} needs bucket_reso_steps "
                            f"divisible by {divisor} (sd-scripts: 'bucket_reso_steps is {steps.value}. it must be "
                            f"divisible by {divisor}')")
            changes.append(Change(_table_of(steps.place), "bucket_reso_steps", divisor))
        problems += _bucket_range_problems(label, dataset, steps.value)
    return problems, changes


def _bucket_range_problems(label: str, dataset: DatasetPlan, steps: int) -> list[str]:
    """adjust_min_max_bucket_reso_by_steps' assertions: min/max bucket reso (rounded to steps) around the
    resolution; left to args.rules when a value comes from the training arguments."""
    get = dataset.get
    resolution, low, high = get("resolution"), get("min_bucket_reso"), get("max_bucket_reso")
    if any(v.source == "args" for v in (get("enable_bucket"), resolution, low, high)):
        return []
    if not isinstance(low.value, int) or not isinstance(high.value, int):
        return []
    (w, h), (lo, hi) = resolution.value, adjust_min_max(low.value, high.value, steps)
    problems = []
    if min(w, h) < lo:
        problems.append(f"{label} {dataset.place}: min_bucket_reso {low.value} ({low.place}) is above the "
                        f"resolution's short side {min(w, h)} ({resolution.place}); sd-scripts: 'min_bucket_reso "
                        "must be equal or less than resolution'")
    if max(w, h) > hi:
        problems.append(f"{label} {dataset.place}: max_bucket_reso {high.value} ({high.place}) is below the "
                        f"resolution's long side {max(w, h)} ({resolution.place}); sd-scripts: 'max_bucket_reso "
                        "must be equal or greater than resolution'")
    return problems


def _table_of(place: str) -> tuple:
    return parse_place(place)[:-1]


# ----------------------------------------------------------------------------- dataset.paths

# The path settings each kind of subset opens, and what each must be.
SUBSET_PATHS = {"dreambooth": (("image_dir", "dir"),),
                "finetuning": (("metadata_file", "file"), ("image_dir", "dir")),
                "controlnet": (("image_dir", "dir"), ("conditioning_data_dir", "dir"))}


@dataclass
class _PathFindings:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    edits: list[Change] = field(default_factory=list)  # control-character paths rewritten as literal strings


@check("dataset.paths", "every image_dir, metadata_file and conditioning_data_dir exists and is the right kind",
       fixes="rewrites a double-quoted path whose backslashes became control characters as a literal string (safe)")
def paths(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    if plan.mode == "folder":
        return _folder_paths(ctx, plan)
    label = _file_label(plan)
    if not plan.subsets:
        return Result.fail(f"{label} defines no subsets: sd-scripts finds no data, logs 'No data found' and exits 0 "
                           "without training", hint="add a [[datasets]] table with a [[datasets.subsets]] table "
                           "that sets image_dir = '/path/to/images'")
    found = _PathFindings()
    for subset in plan.subsets:
        for key, kind in SUBSET_PATHS[subset.kind]:
            value = subset.get(key)
            if isinstance(value.value, str) and value.value:
                _path_finding(plan, f"{label} {value.place}", key, kind, value, found)
    if found.problems:
        return _paths_failure(plan, label, found)
    named = [f"{s.place}: {s.get.get('image_dir') or s.get.get('metadata_file')}" for s in plan.subsets
             if s.get.get("image_dir") or s.get.get("metadata_file")]
    unset = [f"{s.place}: no image_dir (dataset.schema reports it)" for s in plan.subsets
             if not (s.get.get("image_dir") or s.get.get("metadata_file"))]
    return Result.ok(f"{len(named)} subset path{'s' if len(named) != 1 else ''} found"
                     + (f"; {len(unset)} subset{'s' if len(unset) != 1 else ''} without one" if unset else ""),
                     named + unset + found.notes)


def _path_finding(plan: Plan, where: str, key: str, kind: str, value: Value, found: _PathFindings) -> None:
    """One path setting: a control character (with its literal-string edit), `~`, relative, missing, wrong kind."""
    raw = value.value
    if CONTROL.search(raw):
        shown = raw.encode("unicode_escape").decode("ascii")
        found.problems.append(f"{where} = \"{shown}\": contains a control character; a Windows path in double "
                              "quotes turned \\t, \\n or \\b into one, so sd-scripts finds nothing there")
        edit = _literal_edit(plan, value)
        if edit:
            found.edits.append(edit)
        return
    path = Path(raw)
    if raw.startswith("~"):
        found.problems.append(f"{where} = {raw!r}: sd-scripts does not expand ~; write the full path "
                              f"({path.expanduser()})")
        return
    if not path.is_absolute():
        found.notes.append(f"{where} = {raw!r} is relative: sd-scripts resolves it from the folder you launch in "
                           f"(here: {Path.cwd() / path})")
    if not path.exists():
        cost = ("sd-scripts stops with 'no metadata'" if key == "metadata_file" else
                "sd-scripts logs 'not directory', skips this subset and trains on the rest (or on nothing)")
        found.problems.append(f"{where} = {raw!r}: {files.describe(path)}; {cost}")
    elif kind == "dir" and not path.is_dir():
        found.problems.append(f"{where} = {raw!r}: {files.describe(path)}, not a folder")
    elif kind == "file" and not path.is_file():
        then = "waits on it forever" if files.kind_of(path) == "a named pipe (FIFO)" else "crashes opening it"
        found.problems.append(f"{where} = {raw!r}: {files.describe(path)}, not a file; sd-scripts {then}")


def _paths_failure(plan: Plan, label: str, found: _PathFindings) -> Result:
    fix = None
    if found.edits and plan.config is not None:
        fix = _file_fix(plan.config.path, found.edits,
                        "rewrite control-character paths as TOML literal (single-quoted) strings")
    hint = ("write Windows paths in single quotes (TOML literal strings), e.g. image_dir = 'C:\\train\\img'"
            if found.edits or any("control character" in p for p in found.problems) else
            f"correct the paths in {plan.config.path if plan.config else label}")
    return Result.fail(_count_summary(found.problems, "path problem"), _rest(found.problems) + found.notes,
                       hint=hint, fix=fix)


def _literal_edit(plan: Plan, value: Value) -> Change | None:
    """Rewrite a double-quoted path whose escapes made control characters as a literal string."""
    if plan.config is None or plan.config.layout is None:
        return None
    table = _table_of(value.place)
    key = value.place.rsplit(".", 1)[-1]
    span = plan.config.layout.tables.get(table)
    if span is None or key not in span.keys:
        return None
    k = span.keys[key]
    raw = plan.config.text[k.start:k.end]
    if not (raw.startswith('"') and raw.endswith('"')) or raw.startswith('"""'):
        return None
    content = raw[1:-1].replace("\\\\", "\\")
    if "'" in content or '"' in content or CONTROL.search(content):
        return None
    return Change(table, key, content, literal=f"'{content}'")


def _folder_paths(ctx: Context, plan: Plan) -> Result:
    """Folder mode: train_data_dir must hold `<repeats>_<name>` subfolders (D1)."""
    args = train_args_or_none(ctx)
    base = plan.train_data_dir
    if args is None or base is None:  # folder mode is made from the training arguments
        return Result.skip("no training arguments to read train_data_dir from")
    problems: list[str] = []
    for name in ("train_data_dir", "reg_data_dir"):
        raw = args.get(name)
        if not raw:
            continue
        if not isinstance(raw, str):
            problems.append(f"{args.place(name)} = {raw!r}: not a path")
        elif CONTROL.search(raw):
            problems.append(f"{args.place(name)}: {raw.encode('unicode_escape').decode()!r} contains a control "
                            "character (a Windows path in double quotes); use single quotes")
        elif not Path(raw).is_dir():
            problems.append(f"{args.place(name)} = {raw!r}: "
                            f"{'does not exist' if not Path(raw).exists() else 'is not a folder'}")
    train_subsets = [s for s in plan.subsets if not s.is_reg]
    if not problems and not train_subsets:
        direct = plan.scan(Path(base.value)).images
        detail = [f"{base.place} = {base.value!r}"] + plan.notes
        hint = (f"sd-scripts reads only subfolders named <repeats>_<name>: move the images into e.g. "
                f"{Path(base.value) / '10_mytoken'} (10 repeats, class token 'mytoken')")
        summary = (f"{base.value} holds {len(direct)} images directly but no <repeats>_<name> subfolder"
                   if direct else f"{base.value} has no <repeats>_<name> subfolder")
        return Result.fail(f"{summary}: sd-scripts logs 'No data found' and exits 0 without training", detail,
                           hint=hint)
    if problems:
        return Result.fail(_count_summary(problems, "path problem"), _rest(problems) + plan.notes,
                           hint="point train_data_dir at the parent of the <repeats>_<name> folders")
    return Result.ok(f"folder mode: {len(plan.subsets)} subfolder{'s' if len(plan.subsets) != 1 else ''} "
                     f"<repeats>_<name> in {base.value}",
                     [f"{s.place}: {s.get.get('num_repeats')} repeats, class tokens "
                      f"{s.get.get('class_tokens')!r}{', reg' if s.is_reg else ''}" for s in plan.subsets] + plan.notes)


# ----------------------------------------------------------------------------- dataset.images

@dataclass
class _Findings:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


@check("dataset.images", "the images sd-scripts picks up are readable, the right format and size",
       prefetch=prefetch_image_probes)
def images(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    probes = image_probes(ctx)
    label = _file_label(plan)
    found = _Findings()
    for subset in plan.subsets:
        if subset.kind == "finetuning":
            _metadata_images(f"{label} {subset.place}", subset, probes, found)
        else:
            _folder_images(f"{label} {subset.place}", plan, subset, probes, found)
    total = len(probes)
    if found.failures:
        return Result.fail(_count_summary(found.failures, "image problem"),
                           _rest(found.failures) + _capped(found.warnings) + found.info,
                           hint="replace or remove the files listed (re-export them from an image editor); "
                           "sd-scripts crashes when it reaches them, possibly hours into the run")
    if found.warnings:
        return Result.warn(f"{total} images readable; " + _count_summary(found.warnings, "image warning"),
                           _rest(found.warnings) + found.info)
    return Result.ok(f"{total} images readable, formats match their extensions", found.info)


def _metadata_images(where: str, subset: SubsetPlan, probes: dict[str, ImageProbe], found: _Findings) -> None:
    """A fine-tuning subset: the images its metadata names."""
    entries, _ = finetune_entries(subset)
    present = [e["abs_path"] for e in entries.values() if os.path.exists(e["abs_path"])]
    missing = [k for k, e in entries.items() if not os.path.exists(e["abs_path"])]
    if missing:
        found.warnings.append(f"{where}: {len(missing)} of {len(entries)} metadata entries name no existing image "
                              f"(e.g. {missing[0]!r}); fine only when their latents are cached (.npz)")
    _probe_findings(where, present, probes, subset, found)
    found.info.append(f"{where}: {len(entries)} metadata entries")


def _folder_images(where: str, plan: Plan, subset: SubsetPlan, probes: dict[str, ImageProbe],
                   found: _Findings) -> None:
    """A DreamBooth or ControlNet subset: the folder's listing as glob sees it, then each image."""
    image_dir = subset.get.get("image_dir")
    if not isinstance(image_dir, str) or CONTROL.search(image_dir):
        return
    scan = plan.scan(Path(image_dir))
    if scan.error:  # dataset.paths reports a missing folder; one it cannot list is reported here
        if os.path.isdir(image_dir):
            found.failures.append(f"{where}: {image_dir} {scan.error}: sd-scripts' glob finds nothing there, "
                                  "silently, and skips this subset")
        return
    images_ = subset_images(plan, subset) or []
    _listing_findings(where, scan, found)
    if not images_:
        found.failures.append(f"{where}: no images sd-scripts picks up in {image_dir} (it looks for "
                              f"{' '.join(sdfacts.IMAGE_EXTENSIONS[::2])} and their upper-case forms); it skips "
                              "this subset")
        return
    stems = Counter(os.path.splitext(p)[0] for p in images_)
    dupes = sorted(s for s, n in stems.items() if n > 1)
    if dupes:
        found.warnings.append(f"{where}: {len(dupes)} stem{'s' if len(dupes) > 1 else ''} with two images sharing "
                              f"one caption file: {', '.join(os.path.basename(d) for d in dupes[:5])}"
                              f"{' ...' if len(dupes) > 5 else ''}")
    _probe_findings(where, images_, probes, subset, found)
    if subset.kind == "controlnet":
        found.failures.extend(_conditioning_findings(where, plan, subset, images_))
    fmts = Counter((probes.get(p) or ImageProbe(None, None)).fmt or "unreadable" for p in images_)
    sizes = [size for size in (probes[p].size for p in images_ if p in probes) if size is not None]
    small, large = (min(sizes, key=_area), max(sizes, key=_area)) if sizes else (None, None)
    span = f", {small[0]}x{small[1]} .. {large[0]}x{large[1]}" if small and large else ""
    found.info.append(f"{where}: {len(images_)} images ({', '.join(f'{n} {f}' for f, n in sorted(fmts.items()))})"
                      f"{span}")


def _listing_findings(where: str, scan: DirScan, found: _Findings) -> None:
    """Folders named like images, image files glob skips, files only a Pillow plugin opens."""
    for name in scan.image_named_dirs:
        found.failures.append(f"{where}: {name} is a folder named like an image; sd-scripts tries to open it and "
                              "crashes")
    if scan.lookalikes:
        found.warnings.append(f"{where}: {len(scan.lookalikes)} image file{'s' if len(scan.lookalikes) > 1 else ''} "
                              f"sd-scripts skips (extension not in its list, which is case-sensitive): "
                              f"{', '.join(scan.lookalikes[:6])}{' ...' if len(scan.lookalikes) > 6 else ''}; rename "
                              "to lower-case .png/.jpg/.jpeg/.webp/.bmp (or convert) to train on them")
    if scan.plugin_only:
        ext = os.path.splitext(scan.plugin_only[0])[1]
        found.warnings.append(f"{where}: {len(scan.plugin_only)} {ext} files are picked up only when "
                              f"{PLUGIN_EXTENSIONS[ext]} imports in the training venv")


def _conditioning_findings(where: str, plan: Plan, subset: SubsetPlan, found: list[str]) -> list[str]:
    """ControlNetDataset asserts one conditioning image per image (same stem, any image extension) and none
    extra ('missing conditioning data for N images', 'extra conditioning data for N images')."""
    cond_dir = subset.get.get("conditioning_data_dir")
    if not isinstance(cond_dir, str) or CONTROL.search(cond_dir):
        return []
    scan = plan.scan(Path(cond_dir))
    if scan.error:
        return []
    cond = {os.path.splitext(name)[0] for name in scan.images}
    stems = {os.path.splitext(os.path.basename(p))[0] for p in found}
    out = []
    missing, extra = sorted(stems - cond), sorted(cond - stems)
    if missing:
        out.append(f"{where}: {len(missing)} image{'s' if len(missing) > 1 else ''} without a conditioning image in "
                   f"{cond_dir} ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); sd-scripts stops with "
                   f"'missing conditioning data for {len(missing)} images'")
    if extra:
        out.append(f"{where}: {len(extra)} conditioning image{'s' if len(extra) > 1 else ''} without a training image "
                   f"({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}); sd-scripts stops with 'extra "
                   f"conditioning data for {len(extra)} images'")
    return out


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _probe_findings(where: str, paths: list[str], probes: dict[str, ImageProbe], subset: SubsetPlan,
                    found: _Findings) -> None:
    """Each image's header: broken files, odd ones, content that differs from the extension, and sizes that
    crash sd-scripts (bucket_no_upscale) or get upscaled."""
    bad, odd, small, mislabelled = [], [], [], []
    zero_buckets = no_upscale_buckets(subset.get)
    for path in paths:
        probe = probes.get(path) or probe_image(path)
        name = os.path.basename(path)
        if probe.problem:
            bad.append(f"{name}: {probe.problem}")
            continue
        if probe.warning:
            odd.append(f"{name}: {probe.warning}")
        ext = os.path.splitext(path)[1].lower()
        if probe.fmt and EXTENSION_FORMAT.get(ext) not in (None, probe.fmt):
            mislabelled.append(f"{name} holds {probe.fmt.upper()} data")
        if probe.size is None:
            continue
        bucket = zero_buckets.select(*probe.size) if zero_buckets is not None else (1, 1)
        if unusable(bucket):
            bad.append(f"{name}: {probe.size[0]}x{probe.size[1]} gets a {bucket[0]}x{bucket[1]} bucket: with "
                       f"bucket_no_upscale a side that ends below bucket_reso_steps "
                       f"{subset.get.get('bucket_reso_steps')} is cut to 0 pixels and sd-scripts crashes on it")
        elif _upscaled(subset, probe.size):
            small.append(f"{name} {probe.size[0]}x{probe.size[1]}")
    found.failures.extend(f"{where}: {b}" for b in bad)
    found.warnings.extend(f"{where}: {o}" for o in odd)
    if mislabelled:
        found.warnings.append(
            f"{where}: {len(mislabelled)} file{'s' if len(mislabelled) > 1 else ''} whose content differs from the "
            f"extension (Pillow opens them by content, so they train; tools that trust the extension may not): "
            f"{', '.join(mislabelled[:5])}{' ...' if len(mislabelled) > 5 else ''}")
    if small:
        found.warnings.append(f"{where}: {len(small)} image{'s' if len(small) > 1 else ''} smaller than "
                              f"{_upscale_limit(subset)}: upscaled, so they train blurry: {', '.join(small[:5])}"
                              f"{' ...' if len(small) > 5 else ''}")


def _upscaled(subset: SubsetPlan, size: tuple[int, int]) -> bool:
    """Buckets (without bucket_no_upscale) upscale images below min_bucket_reso; no buckets, below the resolution."""
    get = subset.get.get
    if get("enable_bucket"):
        low = get("min_bucket_reso")
        return not get("bucket_no_upscale") and isinstance(low, int) and min(size) < low
    resolution = get("resolution")
    return bool(resolution) and (size[0] < resolution[0] or size[1] < resolution[1])


def _upscale_limit(subset: SubsetPlan) -> str:
    get = subset.get.get
    if get("enable_bucket"):
        return f"min_bucket_reso {get('min_bucket_reso')}"
    return f"resolution {get('resolution')[0]}x{get('resolution')[1]}"


# ----------------------------------------------------------------------------- dataset.captions

@dataclass
class _CaptionFindings(_Findings):
    mismatched: list[tuple[SubsetPlan, Value, str]] = field(default_factory=list)  # (subset, extension, other)
    reading: list[SubsetPlan] = field(default_factory=list)  # subsets that find caption files with their extension


@check("dataset.captions", "each training image has the caption sd-scripts will read, readable and non-empty",
       fixes="sets caption_extension to the extension the caption files use, where it is decided (safe)")
def captions(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    label = _file_label(plan)
    found = _CaptionFindings()
    for subset in plan.subsets:
        if subset.kind == "finetuning":
            found.info.append(f"{label} {subset.place}: captions come from its metadata_file")
            continue
        image_dir = subset.get.get("image_dir")
        paths_ = subset_images(plan, subset) if isinstance(image_dir, str) else None
        if paths_:
            _subset_captions(f"{label} {subset.place}", plan, subset, paths_, found)
    mismatched = found.mismatched
    fix = _caption_fix(ctx, plan, mismatched, found.reading) if mismatched else None
    if found.failures:
        hint = (f"set caption_extension = \"{mismatched[0][2]}\" (the extension your caption files use)"
                if mismatched else "fix the caption files listed: UTF-8 text, not empty")
        return Result.fail(_count_summary(found.failures, "caption problem"),
                           _rest(found.failures) + _capped(found.warnings) + found.info, hint=hint, fix=fix)
    if found.warnings:
        return Result.warn(_count_summary(found.warnings, "caption warning"), _rest(found.warnings) + found.info)
    return Result.ok("every training image has a readable caption", found.info)


def _subset_captions(where: str, plan: Plan, subset: SubsetPlan, paths_: list[str], found: _CaptionFindings) -> None:
    """The caption each image of one subset gets (read_caption), and what is wrong with them."""
    scan = plan.scan(Path(subset.get.get("image_dir")))
    ext = subset.get("caption_extension")
    ext_value = ext.value or ""
    reads = {p: read_caption(p, ext_value, bool(subset.get.get("enable_wildcard")), scan) for p in paths_}
    missing = [p for p, r in reads.items() if r.path is None]
    if len(missing) < len(reads):
        found.reading.append(subset)
    broken = [(p, r) for p, r in reads.items() if r.problem]
    found.failures.extend(f"{where}: {os.path.basename(r.path or p)}: {r.problem}" for p, r in broken)
    if missing:
        _missing_captions(where, subset, ext, missing, len(paths_), scan, found)
    blank = [p for p, r in reads.items() if r.text == ""]
    if blank:
        found.warnings.append(f"{where}: {len(blank)} caption file{'s' if len(blank) > 1 else ''} with an empty "
                              f"first line (trained on an empty caption): "
                              f"{', '.join(os.path.basename(reads[p].path or p) for p in blank[:5])}")
    bom = [p for p, r in reads.items() if r.bom]
    if bom:
        found.warnings.append(f"{where}: {len(bom)} caption file{'s' if len(bom) > 1 else ''} start with a UTF-8 "
                              f"BOM, so the first tag reads '\\ufeff...' (e.g. "
                              f"{os.path.basename(reads[bom[0]].path or bom[0])}); save them as UTF-8 without BOM")
    found.warnings.extend(f"{where}: {r.note}" for r in reads.values() if r.note)
    found.warnings.extend(_trigger_findings(where, subset, reads))
    found.warnings.extend(_reg_findings(where, subset, plan))
    if not missing and not broken:
        found.info.append(f"{where}: {len(paths_)} captions ({ext_value}, {ext.place})")


def _missing_captions(where: str, subset: SubsetPlan, ext: Value, missing: list[str], total: int, scan: DirScan,
                      found: _CaptionFindings) -> None:
    """Images without a caption file: another extension next to them, an extension without its dot, or what
    they train on instead (class tokens or an empty caption)."""
    other = _other_caption_extension(missing, scan)
    ext_value = ext.value or ""
    tokens = subset.get.get("class_tokens")
    if other:
        found.failures.append(
            f"{where}: {len(missing)} of {total} images have no {ext_value or '(empty)'} caption (caption_extension "
            f"{ext_value!r} from {ext.place}) but {other[1]} have a {other[0]} file next to them; sd-scripts ignores "
            f"those and trains on {'the class tokens' if tokens is not None else 'empty captions'} (the LoRA learns "
            "no trigger word)")
        found.mismatched.append((subset, ext, other[0]))
    elif ext_value and not ext_value.startswith("."):
        found.failures.append(f"{where}: caption_extension {ext_value!r} ({ext.place}) has no leading dot: "
                              f"sd-scripts looks for e.g. "
                              f"{os.path.basename(caption_path_example(missing[0], ext_value))}")
    elif not subset.is_reg:
        uses = "its class tokens " + repr(tokens) if tokens is not None else "an empty caption"
        found.warnings.append(f"{where}: {len(missing)} of {total} images have no {ext_value} caption; each trains "
                              f"on {uses} (sd-scripts: 'No caption file found for {len(missing)} images')")
    else:
        uses = f"the class tokens {tokens!r}" if tokens is not None else "an empty caption (no class_tokens)"
        found.info.append(f"{where}: {len(missing)} reg images without captions train on {uses}; sd-scripts warns "
                          "about them, which is expected for reg images")


def caption_path_example(image_path: str, extension: str) -> str:
    return os.path.splitext(image_path)[0] + extension


def _other_caption_extension(missing: list[str], scan: Any) -> tuple[str, int] | None:
    """The extension that files sharing the images' stems use (e.g. ".txt"), and how many images have one."""
    counts: Counter[str] = Counter()
    for path in missing:
        for ext in scan.extensions.get(os.path.splitext(os.path.basename(path))[0], ()):
            if ext.lower() not in NOT_CAPTIONS:
                counts[ext] += 1
    if not counts:
        return None
    ext, n = counts.most_common(1)[0]
    return ext, n


def _trigger_findings(where: str, subset: SubsetPlan, reads: dict[str, CaptionRead]) -> list[str]:
    """With keep_tokens and shuffling, the kept head should be the same trigger everywhere in a subset."""
    keep = subset.get.get("keep_tokens") or 0
    if keep < 1 and not subset.get.get("keep_tokens_separator"):
        return []
    if not shuffles(subset.get.get):
        return []
    kept = token_keeper(subset.get.get)
    heads = Counter(kept(r.text) for r in reads.values() if r.text)
    if len(heads) <= 1:
        return []
    shown = "; ".join(f"{', '.join(h) or '(nothing)'} x{n}" for h, n in heads.most_common(4))
    return [(f"{where}: keep_tokens = {keep} keeps different leading tokens in different captions ({shown}); the "
             "trigger word should come first in every caption")]


def _reg_findings(where: str, subset: SubsetPlan, plan: Plan) -> list[str]:
    if plan.mode != "config" or subset.kind != "dreambooth":
        return []
    path = os.path.normpath(str(subset.get.get("image_dir") or ""))
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    if REG_NAME.search(name) and not subset.is_reg:
        return [(f"{where}: folder {name!r} looks like regularization images but is_reg is not set: they train as "
                 "your subject (set is_reg = true in this subset)")]
    # reg/1_anime_character: kohya's layout names the class under a reg folder, and a class may well be a character
    if subset.is_reg and re.search(r"train|subject|char", name, re.IGNORECASE) and not REG_NAME.search(name) \
            and not REG_NAME.search(parent):
        return [(f"{where}: folder {name!r} is marked is_reg = true: its images only balance the training set and "
                 "do not teach the subject; remove is_reg if they are your training images")]
    return []


def _caption_fix(ctx: Context, plan: Plan, mismatched: list[tuple[SubsetPlan, Value, str]],
                 reading: list[SubsetPlan]) -> Fix | None:
    """Set caption_extension where it is decided: the subset, or the dataset/[general] value it inherits when
    changing that breaks no other subset (each heir is mismatched the same way or reads no captions now); in
    folder mode, the training config TOML."""
    if plan.mode == "folder":
        return _train_config_caption_fix(ctx, mismatched)
    config = plan.config
    if config is None or config.fmt != "toml":
        return None
    changes: list[Change] = []
    done: set[tuple] = set()
    for subset, value, ext in mismatched:
        table = subset.table_path
        if value.source in ("dataset", "general"):
            heirs = [s for s in plan.subsets if s.get("caption_extension").place == value.place]
            wants = {e for s, v, e in mismatched if v.place == value.place}
            if len(wants) == 1 and all(any(s is m[0] for m in mismatched) or all(s is not r for r in reading)
                                       for s in heirs):
                table = _table_of(value.place)
        if table in done:
            continue
        done.add(table)
        changes.append(Change(table, "caption_extension", ext))
    return _file_fix(config.path, changes, f"set caption_extension to {', '.join(sorted({m[2] for m in mismatched}))}"
                     ", the extension the caption files use")


def _train_config_caption_fix(ctx: Context, mismatched: list[tuple[SubsetPlan, Value, str]]) -> Fix | None:
    """Folder mode: caption_extension is a training argument; set it where it is set (or add it)."""
    exts = {m[2] for m in mismatched}
    args = train_args_or_none(ctx)
    if len(exts) != 1 or args is None:
        return None
    ext = exts.pop()
    fix, _ = argfix.plan(args, [ArgChange("caption_extension", ext)]).fix(
        f"set caption_extension = {ext} in the training arguments, the extension the caption files use", safe=True)
    return fix


# ----------------------------------------------------------------------------- dataset.steps


@check("dataset.steps", "images x repeats, reg balancing, buckets and batches give the steps and save points "
       "sd-scripts will run")
def steps(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    try:
        sp = compute_steps(ctx)
    except ImpossibleSteps as exc:
        return _impossible(ctx, plan, exc)
    details = _count_details(sp)
    per_proc = f" / {sp.num_processes} processes" if sp.num_processes > 1 else ""
    accum = f" / gradient accumulation {sp.grad_accum}" if sp.grad_accum > 1 else ""
    details.append(f"steps per epoch: {sp.batches_per_epoch} batches{per_proc}{accum} = {sp.steps_per_epoch}")
    step_saves = sorted({s["step"] for s in sp.saves if s["kind"] != "final"})
    details.append("checkpoints: " + ", ".join(f"{s['file']} (step {s['step']})" for s in sp.saves[:8])
                   + (f" ... {len(sp.saves)} files" if len(sp.saves) > 8 else ""))
    details += sp.notes + plan.notes
    final = "" if sp.total_steps in step_saves else f", {sp.total_steps} (final)"
    saves = f"; saves at steps {', '.join(map(str, step_saves[:10]))}{' ...' if len(step_saves) > 10 else ''}{final}" \
        if step_saves else "; saves only at the end"
    summary = (f"{sp.steps_per_epoch} steps per epoch; {sp.total_steps} steps = {sp.epochs} epoch"
               f"{'s' if sp.epochs != 1 else ''}{saves}")
    if schema_errors(ctx):
        summary += " (counting as if the keys dataset.schema rejects were left out)"
    return Result.ok(summary, details, data=sp.data())


def _count_details(sp: StepPlan) -> list[str]:
    """Per dataset: samples, reg balancing, batches and the largest buckets."""
    details: list[str] = []
    for d in sp.datasets:
        reg = f" + {d.samples - d.train_samples} reg (balanced from {d.reg_samples})" if d.reg_samples else ""
        details.append(f"{d.place}: {d.train_samples} train images x repeats{reg} = {d.samples} samples, batch "
                       f"{d.batch_size} -> {d.batches} batches"
                       + (f" over {len(d.buckets)} buckets" if len(d.buckets) > 1 else ""))
        if len(d.buckets) > 1:
            top = sorted(d.buckets.items(), key=lambda kv: -kv[1])[:6]
            details.append("  buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in top)
                           + (" ..." if len(d.buckets) > 6 else ""))
        details += [f"  {n}" for n in d.notes]
    return details


def _impossible(ctx: Context, plan: Plan, exc: ImpossibleSteps) -> Result:
    """sd-scripts stops (or crashes) before the first step: the reason, with a fix where a setting has a safe
    value."""
    summary = str(exc)
    if plan.config is not None and summary.startswith("datasets["):  # name the file the place is in
        summary = f"{plan.config.path.name} {summary}"
    hint = exc.hint or ("fix the setting named above; sd-scripts stops before the first step (or, with no data, "
                        "exits 0 without training)")
    fix = _setting_fix(ctx, plan, exc.changes) if exc.changes else None
    return Result.fail(summary, exc.details + plan.notes, hint=hint, fix=fix)


def _setting_fix(ctx: Context, plan: Plan, changes: list[SettingChange]) -> Fix | None:
    """Set each crashing dataset setting to its safe value in the file that sets it: the training config, or
    the dataset config's table that sets it; a value shared by several datasets only when every one of them
    takes the new value, else the crashing dataset's own table (which also overrides a command-line value)."""
    key = changes[0].key
    wanted = max(c.wanted for c in changes if c.wanted is not None)
    description = f"set {key} = {wanted}, a multiple of bucket_reso_steps (sd-scripts crashes below one step)"
    in_train_config = all(c.current.source == "args" and not c.current.place.startswith("--")
                          and _all_heirs_take(plan, c) for c in changes)
    if plan.mode == "folder" or in_train_config:
        args = train_args_or_none(ctx)
        if args is None:
            return None
        fix, _ = argfix.plan(args, [ArgChange(key, wanted)]).fix(description, safe=True)
        return fix
    config = plan.config
    if config is None or config.layout is None:
        return None
    tables: dict[tuple, int] = {}
    for c in changes:
        own = c.current.source == "dataset" or c.current.source == "general" and _all_heirs_take(plan, c)
        table = _table_of(c.current.place) if own else parse_place(c.dataset.place)
        tables[table] = max(tables.get(table, 0), c.wanted or 0)
    return _file_fix(config.path, [Change(t, key, v) for t, v in tables.items()], description)


def _all_heirs_take(plan: Plan, change: SettingChange) -> bool:
    """Every bucketing dataset that inherits the changed value accepts the new one (sd-scripts asserts that
    min_bucket_reso is at most the resolution's short side)."""
    heirs = [d for d in plan.datasets if d.get(change.key).place == change.current.place and d.get.get("enable_bucket")]
    return change.wanted is not None and all(min(d.get.get("resolution") or (0, 0)) >= change.wanted for d in heirs)


__all__ = ["captions", "compute_steps", "dataset_step_plan", "images", "paths", "schema", "steps"]
