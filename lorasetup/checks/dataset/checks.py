"""The dataset gate: the dataset config as sd-scripts validates it, the folders, images and captions it will
read, and the exact step count of the run.

The config comes from the Target (`dataset_config`) or the training arguments (`--dataset_config`); without
one, folder mode (`train_data_dir` with `<repeats>_<name>` subfolders) is checked. The five checks share one
parsed config and one scan per run (Context.memo), and each reports what it can even when another fails, so a
person sees every problem in one run.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup.checks import check
from lorasetup.engine.context import Context
from lorasetup.engine.fileedit import backup
from lorasetup.engine.result import Fix, FixError, Result
from lorasetup.engine.target import tomllib
from lorasetup.sd import facts as sdfacts
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
    ImageProbe,
    ImpossibleSteps,
    Plan,
    SubsetPlan,
    Value,
    finetune_entries,
    probe_image,
    read_caption,
    shuffles,
    subset_images,
    token_keeper,
)
from lorasetup.sd.dataset.schema import (
    PATH_KEYS,
    ConfigSyntaxError,
    SchemaChecker,
    TomlLayout,
    format_place,
    parse_place,
)

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


# ----------------------------------------------------------------------------- text edits with backups

@dataclass
class Edit:
    """Replace text[start:end] by `text`; `verify(data)` says whether the parsed result is the intended one."""

    start: int
    end: int
    text: str
    label: str


def _edit_fix(path: Path, planned: str, edits: list[Edit], expected: Callable[[Any], bool],
              description: str) -> Fix:
    """A safe fix that applies targeted text edits to `path`, keeping every other byte, after a backup.

    It refuses when the file changed since it was checked, or when the edited file would not parse to the
    intended data (`expected`)."""
    commands = [f"edit {path}: {e.label}" for e in edits] + [f"backup first: {path.name}.bak-<timestamp>"]

    def apply() -> None:
        try:
            current = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FixError(f"{path}: cannot read it again: {exc}") from None
        if current != planned:
            raise FixError(f"{path} changed since it was checked; run lorasetup again before fixing")
        new = planned
        for e in sorted(edits, key=lambda e: e.start, reverse=True):
            new = new[:e.start] + e.text + new[e.end:]
        try:
            data = tomllib.loads(new)
        except tomllib.TOMLDecodeError as exc:
            raise FixError(f"{path}: the edit would not parse ({exc}); nothing was changed") from None
        if not expected(data):
            raise FixError(f"{path}: the edit would change more than intended; nothing was changed")
        backup(path)
        try:
            path.write_bytes(new.encode("utf-8"))
        except OSError as exc:
            raise FixError(f"{path}: cannot write it: {exc.strerror}") from None
    return Fix(description, commands, apply, safe=True)


def _toml_str(value: str) -> str:
    """A TOML basic string for simple values (extensions, numbers as text)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _set_key(text: str, layout: TomlLayout, table: tuple, key: str, literal: str) -> Edit | None:
    """Replace the value of `key` in `table`, or insert `key = literal` right after the table's header."""
    span = layout.tables.get(table)
    if span is None:
        return None
    where = format_place(table) if table else "top level"
    if key in span.keys:
        k = span.keys[key]
        return Edit(k.start, k.end, literal, f"line {k.line + 1}: {key} = {literal}")
    indent = ""
    if span.keys:
        first = min(span.keys.values(), key=lambda k: k.start)
        line_start = text.rfind("\n", 0, first.start) + 1
        indent = re.match(r"[ \t]*", text[line_start:]).group(0)
    at = span.header_end
    prefix = _newline(text) if at > 0 and not text[:at].endswith("\n") else ""
    line = (span.header_line + 2) if span.header_line is not None else 1
    return Edit(at, at, f"{prefix}{indent}{key} = {literal}{_newline(text)}",
                f"add `{key} = {literal}` at line {line} ({where})")


def _data_at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _expect_changes(old: Any, changes: list[tuple[tuple, str, Any]]) -> Callable[[Any], bool]:
    """The parsed new file must equal the old data with exactly these (table, key, value) changes."""
    want = copy.deepcopy(old)
    for table, key, value in changes:
        _data_at(want, table)[key] = value
    return lambda data: data == want


# ----------------------------------------------------------------------------- dataset.schema

@check("dataset.schema", "the dataset config is what sd-scripts' ConfigSanitizer accepts for this script")
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
        if plan.mode == "custom":
            return Result.skip(plan.notes[0])
        problems, _ = _dataset_rules(ctx, plan, checker)
        if problems:
            return Result.fail(_count_summary(problems, "problem"), _rest(problems), hint=_RULES_HINT)
        return Result.ok(f"folder mode: {plan.train_data_dir.value} ({plan.train_data_dir.place}); no dataset "
                         "config to validate", [f"rules of {checker.support.origin}"])
    errors = schema_errors(ctx)
    label = loaded.path.name
    details = [e.render(label) for e in errors]
    plan = dataset_plan(ctx)
    rule_problems, fixes = _dataset_rules(ctx, plan, checker)
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


def _syntax_failure(path: Path | None, exc: ConfigSyntaxError) -> Result:
    where = f"{path}" + (f":{exc.line}" if exc.line else "") + (f":{exc.column}" if exc.column else "")
    fmt = "JSON" if path and path.suffix.lower() == ".json" else "TOML"
    if exc.line is None and "not found" in exc.message:
        return Result.fail(exc.message, hint="point --dataset-config (or dataset_config) at the existing file; "
                           "sd-scripts stops with 'file not found'")
    details, fix, hint = [], None, f"fix the syntax at {where}; sd-scripts cannot start without a readable config"
    if path is not None and fmt == "TOML" and exc.line:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        edits = _literal_edits_for_syntax(text)
        if edits:
            details = [e.label for e in edits]
            hint = ("a Windows path in double quotes: backslashes start escapes there (\\U, \\x, \\t); write paths "
                    "in single quotes (TOML literal strings): image_dir = 'C:\\Users\\me\\img'")
            fix = _edit_fix(path, text, edits, lambda data: True,
                            "rewrite backslash paths as TOML literal (single-quoted) strings")
    return Result.fail(f"{where}: not valid {fmt}: {exc.message}", details, hint=hint, fix=fix)


_BASIC_PATH_LINE = re.compile(
    r"""^([ \t]*([A-Za-z0-9_.-]+)[ \t]*=[ \t]*)"([^"'\n\r]*\\[^"'\n\r]*)"(?=[ \t]*(#|\r?$))""", re.MULTILINE)


def _literal_edits_for_syntax(text: str) -> list[Edit]:
    """Backslash paths in double quotes that break parsing (`\\U` needs hex digits), as literal strings."""
    edits = []
    for m in _BASIC_PATH_LINE.finditer(text):
        if m.group(2).split(".")[-1] not in PATH_KEYS and m.group(2) not in PATH_KEYS:
            continue
        content = m.group(3).replace("\\\\", "\\")
        start = m.start(3) - 1
        line = text.count("\n", 0, m.start()) + 1
        edits.append(Edit(start, m.end(3) + 1, f"'{content}'", f"line {line}: {m.group(2)} = '{content}'"))
    if not edits:
        return []
    new = text
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        new = new[:e.start] + e.text + new[e.end:]
    try:
        tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        return []
    return edits


def _dataset_rules(ctx: Context, plan: Plan, checker: SchemaChecker) -> tuple[list[str], Fix | None]:
    """What DreamBoothDataset / BaseDataset assert after the schema passes: resolution set, bucket_reso_steps
    divisible by the script's divisor, min/max bucket reso around the resolution. Values that come from the
    training arguments are the args gate's to report (args.rules), so they are left out here."""
    problems: list[str] = []
    fix_edits: list[Edit] = []
    changes: list[tuple[tuple, str, Any]] = []
    seen: set[str] = set()
    divisor = sdfacts.bucket_divisor(entry_script(ctx)) if entry_script(ctx) is not None else None
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
        steps, low, high = get("bucket_reso_steps"), get("min_bucket_reso"), get("max_bucket_reso")
        if not isinstance(steps.value, int) or steps.value < 1:
            continue
        if divisor and steps.value % divisor and steps.source in ("dataset", "general") and steps.place not in seen:
            seen.add(steps.place)  # a [general] value shared by several datasets is reported and fixed once
            problems.append(f"{label} {steps.place} = {steps.value}: {ctx.target.script} needs bucket_reso_steps "
                            f"divisible by {divisor} (sd-scripts: 'bucket_reso_steps is {steps.value}. it must be "
                            f"divisible by {divisor}')")
            edit = _value_edit(plan, steps, str(divisor))
            if edit:
                fix_edits.append(edit)
                changes.append((_table_of(steps.place), "bucket_reso_steps", divisor))
        if any(v.source == "args" for v in (get("enable_bucket"), resolution, low, high)):
            continue
        w, h = resolution.value
        lo = low.value - low.value % steps.value if isinstance(low.value, int) else None
        hi = (high.value + (steps.value - high.value % steps.value) % steps.value
              if isinstance(high.value, int) else None)
        if lo is not None and min(w, h) < lo:
            problems.append(f"{label} {dataset.place}: min_bucket_reso {low.value} ({low.place}) is above the "
                            f"resolution's short side {min(w, h)} ({resolution.place}); sd-scripts: 'min_bucket_reso "
                            "must be equal or less than resolution'")
        if hi is not None and max(w, h) > hi:
            problems.append(f"{label} {dataset.place}: max_bucket_reso {high.value} ({high.place}) is below the "
                            f"resolution's long side {max(w, h)} ({resolution.place}); sd-scripts: 'max_bucket_reso "
                            "must be equal or greater than resolution'")
    fix = None
    if fix_edits and plan.config is not None and plan.config.layout is not None:
        fix = _edit_fix(plan.config.path, plan.config.text, fix_edits,
                        _expect_changes(plan.config.data, changes),
                        f"set bucket_reso_steps to {divisor}, the divisor {ctx.target.script} demands")
    return problems, fix


def _table_of(place: str) -> tuple:
    return parse_place(place)[:-1]


def _value_edit(plan: Plan, value: Value, literal: str) -> Edit | None:
    """An edit that replaces the value at `value.place` in the dataset TOML."""
    if plan.config is None or plan.config.layout is None:
        return None
    table = _table_of(value.place)
    key = value.place.rsplit(".", 1)[-1]
    return _set_key(plan.config.text, plan.config.layout, table, key, literal)


# ----------------------------------------------------------------------------- dataset.paths

@check("dataset.paths", "every image_dir, metadata_file and conditioning_data_dir exists and is the right kind")
def paths(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    if plan.mode == "folder":
        return _folder_paths(ctx, plan)
    label = _file_label(plan)
    problems: list[str] = []
    notes: list[str] = []
    literal_edits: list[Edit] = []
    changes: list[tuple[tuple, str, Any]] = []
    if not plan.subsets:
        return Result.fail(f"{label} defines no subsets: sd-scripts finds no data, logs 'No data found' and exits 0 "
                           "without training", hint="add a [[datasets]] table with a [[datasets.subsets]] table "
                           "that sets image_dir = '/path/to/images'")
    cwd = Path.cwd()
    for subset in plan.subsets:
        wanted = {"dreambooth": (("image_dir", "dir"),),
                  "finetuning": (("metadata_file", "file"), ("image_dir", "dir")),
                  "controlnet": (("image_dir", "dir"), ("conditioning_data_dir", "dir"))}[subset.kind]
        for key, kind in wanted:
            value = subset.get(key)
            raw = value.value
            if not isinstance(raw, str) or not raw:
                continue
            where = f"{label} {value.place}"
            if CONTROL.search(raw):
                shown = raw.encode("unicode_escape").decode("ascii")
                problems.append(f"{where} = \"{shown}\": contains a control character; a Windows path in double "
                                "quotes turned \\t, \\n or \\b into one, so sd-scripts finds nothing there")
                edit = _literal_edit(plan, value)
                if edit:
                    literal_edits.append(edit[0])
                    changes.append((_table_of(value.place), key, edit[1]))
                continue
            path = Path(raw)
            if raw.startswith("~"):
                problems.append(f"{where} = {raw!r}: sd-scripts does not expand ~; write the full path "
                                f"({Path(raw).expanduser()})")
                continue
            if not path.is_absolute():
                notes.append(f"{where} = {raw!r} is relative: sd-scripts resolves it from the folder you launch in "
                             f"(here: {cwd / path})")
            if not path.exists():
                cost = ("sd-scripts stops with 'no metadata'" if key == "metadata_file" else
                        "sd-scripts logs 'not directory', skips this subset and trains on the rest (or on nothing)")
                problems.append(f"{where} = {raw!r}: does not exist; {cost}")
            elif kind == "dir" and not path.is_dir():
                problems.append(f"{where} = {raw!r}: is a file, not a folder")
            elif kind == "file" and not path.is_file():
                problems.append(f"{where} = {raw!r}: is a folder, not a file")
    fix = None
    if literal_edits:
        fix = _edit_fix(plan.config.path, plan.config.text, literal_edits,
                        _expect_changes(plan.config.data, changes),
                        "rewrite control-character paths as TOML literal (single-quoted) strings")
    if problems:
        hint = ("write Windows paths in single quotes (TOML literal strings), e.g. image_dir = 'C:\\train\\img'"
                if literal_edits or any("control character" in p for p in problems) else
                f"correct the paths in {plan.config.path if plan.config else label}")
        return Result.fail(_count_summary(problems, "path problem"), _rest(problems) + notes, hint=hint, fix=fix)
    found = [f"{s.place}: {s.get.get('image_dir') or s.get.get('metadata_file')}" for s in plan.subsets
             if s.get.get("image_dir") or s.get.get("metadata_file")]
    unset = [f"{s.place}: no image_dir (dataset.schema reports it)" for s in plan.subsets
             if not (s.get.get("image_dir") or s.get.get("metadata_file"))]
    return Result.ok(f"{len(found)} subset path{'s' if len(found) != 1 else ''} found"
                     + (f"; {len(unset)} subset{'s' if len(unset) != 1 else ''} without one" if unset else ""),
                     found + unset + notes)


def _literal_edit(plan: Plan, value: Value) -> tuple[Edit, str] | None:
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
    return Edit(k.start, k.end, f"'{content}'", f"line {k.line + 1}: {key} = '{content}'"), content


def _folder_paths(ctx: Context, plan: Plan) -> Result:
    """Folder mode: train_data_dir must hold `<repeats>_<name>` subfolders (D1)."""
    args = train_args_or_none(ctx)
    base = plan.train_data_dir
    problems: list[str] = []
    for name in ("train_data_dir", "reg_data_dir"):
        raw = args.get(name) if args else None
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

@check("dataset.images", "the images sd-scripts picks up are readable, the right format and size",
       prefetch=prefetch_image_probes)
def images(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    probes = image_probes(ctx)
    label = _file_label(plan)
    failures: list[str] = []
    warnings: list[str] = []
    info: list[str] = []
    for subset in plan.subsets:
        where = f"{label} {subset.place}"
        if subset.kind == "finetuning":
            entries, _ = finetune_entries(subset)
            present = [e["abs_path"] for e in entries.values() if os.path.exists(e["abs_path"])]
            missing = [k for k, e in entries.items() if not os.path.exists(e["abs_path"])]
            if missing:
                warnings.append(f"{where}: {len(missing)} of {len(entries)} metadata entries name no existing image "
                                f"(e.g. {missing[0]!r}); fine only when their latents are cached (.npz)")
            _probe_findings(where, present, probes, subset, failures, warnings)
            info.append(f"{where}: {len(entries)} metadata entries")
            continue
        image_dir = subset.get.get("image_dir")
        if not isinstance(image_dir, str) or CONTROL.search(image_dir):
            continue
        scan = plan.scan(Path(image_dir))
        if scan.error:
            continue  # dataset.paths reports it
        found = subset_images(plan, subset) or []
        for name in scan.image_named_dirs:
            failures.append(f"{where}: {name} is a folder named like an image; sd-scripts tries to open it and crashes")
        if scan.lookalikes:
            warnings.append(f"{where}: {len(scan.lookalikes)} image file{'s' if len(scan.lookalikes) > 1 else ''} "
                            f"sd-scripts skips (extension not in its list, which is case-sensitive): "
                            f"{', '.join(scan.lookalikes[:6])}{' ...' if len(scan.lookalikes) > 6 else ''}; rename to "
                            "lower-case .png/.jpg/.jpeg/.webp/.bmp (or convert) to train on them")
        if scan.plugin_only:
            ext = os.path.splitext(scan.plugin_only[0])[1]
            warnings.append(f"{where}: {len(scan.plugin_only)} {ext} files are picked up only when "
                            f"{PLUGIN_EXTENSIONS[ext]} imports in the training venv")
        if not found:
            failures.append(f"{where}: no images sd-scripts picks up in {image_dir} (it looks for "
                            f"{' '.join(sdfacts.IMAGE_EXTENSIONS[::2])} and their upper-case forms); it skips this "
                            "subset")
            continue
        stems = Counter(os.path.splitext(p)[0] for p in found)
        dupes = sorted(s for s, n in stems.items() if n > 1)
        if dupes:
            warnings.append(f"{where}: {len(dupes)} stem{'s' if len(dupes) > 1 else ''} with two images sharing one "
                            f"caption file: {', '.join(os.path.basename(d) for d in dupes[:5])}"
                            f"{' ...' if len(dupes) > 5 else ''}")
        _probe_findings(where, found, probes, subset, failures, warnings)
        if subset.kind == "controlnet":
            failures.extend(_conditioning_findings(where, plan, subset, found))
        fmts = Counter((probes.get(p) or ImageProbe(None, None)).fmt or "unreadable" for p in found)
        sizes = [probes[p].size for p in found if p in probes and probes[p].size]
        small, large = (min(sizes, key=_area), max(sizes, key=_area)) if sizes else (None, None)
        span = f", {small[0]}x{small[1]} .. {large[0]}x{large[1]}" if sizes else ""
        info.append(f"{where}: {len(found)} images ({', '.join(f'{n} {f}' for f, n in sorted(fmts.items()))}){span}")
    total = len(probes)
    if failures:
        return Result.fail(_count_summary(failures, "image problem"), _rest(failures) + _capped(warnings) + info,
                           hint="replace or remove the files listed (re-export them from an image editor); "
                           "sd-scripts crashes when it reaches them, possibly hours into the run")
    if warnings:
        return Result.warn(f"{total} images readable; " + _count_summary(warnings, "image warning"),
                           _rest(warnings) + info)
    return Result.ok(f"{total} images readable, formats match their extensions", info)


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
                    failures: list[str], warnings: list[str]) -> None:
    bad, odd, small, mislabelled = [], [], [], []
    get = subset.get.get
    bucket = bool(get("enable_bucket"))
    no_upscale = bool(get("bucket_no_upscale"))
    min_bucket = get("min_bucket_reso") if isinstance(get("min_bucket_reso"), int) else 0
    steps = get("bucket_reso_steps") if isinstance(get("bucket_reso_steps"), int) else 0
    resolution = get("resolution")
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
        w, h = probe.size
        if bucket and no_upscale and steps and (w < steps or h < steps):
            bad.append(f"{name}: {w}x{h} is smaller than bucket_reso_steps {steps}: with bucket_no_upscale its "
                       "bucket is 0 pixels wide and sd-scripts crashes")
        elif (bucket and not no_upscale and min(w, h) < min_bucket
              or not bucket and resolution and (w < resolution[0] or h < resolution[1])):
            small.append(f"{name} {w}x{h}")
    if bad:
        failures.extend(f"{where}: {b}" for b in bad)
    if odd:
        warnings.extend(f"{where}: {o}" for o in odd)
    if mislabelled:
        warnings.append(f"{where}: {len(mislabelled)} file{'s' if len(mislabelled) > 1 else ''} whose content "
                        f"differs from the extension (Pillow opens them by content, so they train; tools that trust "
                        f"the extension may not): {', '.join(mislabelled[:5])}{' ...' if len(mislabelled) > 5 else ''}")
    if small:
        limit = f"min_bucket_reso {min_bucket}" if bucket else f"resolution {resolution[0]}x{resolution[1]}"
        warnings.append(f"{where}: {len(small)} image{'s' if len(small) > 1 else ''} smaller than {limit}: "
                        f"upscaled, so they train blurry: {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}")


# ----------------------------------------------------------------------------- dataset.captions

@check("dataset.captions", "each training image has the caption sd-scripts will read, readable and non-empty")
def captions(ctx: Context) -> Result:
    plan = _usable_plan(ctx)
    if isinstance(plan, Result):
        return plan
    label = _file_label(plan)
    failures: list[str] = []
    warnings: list[str] = []
    info: list[str] = []
    mismatched: list[tuple[SubsetPlan, Value, str]] = []
    reading: list[SubsetPlan] = []  # subsets that find caption files with their current extension
    for subset in plan.subsets:
        if subset.kind == "finetuning":
            info.append(f"{label} {subset.place}: captions come from its metadata_file")
            continue
        image_dir = subset.get.get("image_dir")
        paths_ = subset_images(plan, subset) if isinstance(image_dir, str) else None
        if not paths_:
            continue
        scan = plan.scan(Path(image_dir))
        where = f"{label} {subset.place}"
        ext = subset.get("caption_extension")
        wildcard = bool(subset.get.get("enable_wildcard"))
        reads = {p: read_caption(p, ext.value or "", wildcard, scan) for p in paths_}
        missing = [p for p, r in reads.items() if r.path is None]
        if len(missing) < len(reads):
            reading.append(subset)
        broken = [(p, r) for p, r in reads.items() if r.problem]
        for p, r in broken:
            failures.append(f"{where}: {os.path.basename(r.path or p)}: {r.problem}")
        other = _other_caption_extension(missing, scan)
        ext_value = ext.value or ""
        if missing and other:
            failures.append(f"{where}: {len(missing)} of {len(paths_)} images have no {ext_value or '(empty)'} caption "
                            f"(caption_extension {ext_value!r} from {ext.place}) but {other[1]} have a {other[0]} file "
                            f"next to them; sd-scripts ignores those and trains on "
                            f"{'the class tokens' if subset.get.get('class_tokens') is not None else 'empty captions'}"
                            " (the LoRA learns no trigger word)")
            mismatched.append((subset, ext, other[0]))
        elif ext_value and not ext_value.startswith(".") and missing:
            failures.append(f"{where}: caption_extension {ext_value!r} ({ext.place}) has no leading dot: sd-scripts "
                            f"looks for e.g. {os.path.basename(caption_path_example(missing[0], ext_value))}")
        elif missing and not subset.is_reg:
            uses = ("its class tokens " + repr(subset.get.get("class_tokens"))
                    if subset.get.get("class_tokens") is not None else "an empty caption")
            warnings.append(f"{where}: {len(missing)} of {len(paths_)} images have no {ext_value} caption; each trains "
                            f"on {uses} (sd-scripts: 'No caption file found for {len(missing)} images')")
        elif missing and subset.is_reg:
            tokens = subset.get.get("class_tokens")
            uses = f"the class tokens {tokens!r}" if tokens is not None else "an empty caption (no class_tokens)"
            info.append(f"{where}: {len(missing)} reg images without captions train on {uses}; sd-scripts warns "
                        "about them, which is expected for reg images")
        blank = [p for p, r in reads.items() if r.text == ""]
        if blank:
            warnings.append(f"{where}: {len(blank)} caption file{'s' if len(blank) > 1 else ''} with an empty first "
                            f"line (trained on an empty caption): "
                            f"{', '.join(os.path.basename(reads[p].path) for p in blank[:5])}")
        bom = [p for p, r in reads.items() if r.bom]
        if bom:
            warnings.append(f"{where}: {len(bom)} caption file{'s' if len(bom) > 1 else ''} start with a UTF-8 BOM, "
                            f"so the first tag reads '\\ufeff...' (e.g. {os.path.basename(reads[bom[0]].path)}); "
                            "save them as UTF-8 without BOM")
        warnings.extend(_trigger_findings(where, subset, reads))
        warnings.extend(_reg_findings(where, subset, plan))
        if not missing and not broken:
            info.append(f"{where}: {len(paths_)} captions ({ext_value}, {ext.place})")
    fix = _caption_fix(ctx, plan, mismatched, reading) if mismatched else None
    if failures:
        hint = (f"set caption_extension = \"{mismatched[0][2]}\" (the extension your caption files use)"
                if mismatched else "fix the caption files listed: UTF-8 text, not empty")
        return Result.fail(_count_summary(failures, "caption problem"), _rest(failures) + _capped(warnings) + info,
                           hint=hint, fix=fix)
    if warnings:
        return Result.warn(_count_summary(warnings, "caption warning"), _rest(warnings) + info)
    return Result.ok("every training image has a readable caption", info)


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
    if not shuffles(subset):
        return []
    kept = token_keeper(subset)
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
    if config is None or config.layout is None:
        return None
    edits: list[Edit] = []
    changes: list[tuple[tuple, str, Any]] = []
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
        edit = _set_key(config.text, config.layout, table, "caption_extension", _toml_str(ext))
        if edit is None:
            return None
        edits.append(edit)
        changes.append((table, "caption_extension", ext))
    return _edit_fix(config.path, config.text, edits, _expect_changes(config.data, changes),
                     f"set caption_extension to {', '.join(sorted({m[2] for m in mismatched}))}, the extension the "
                     "caption files use")


def _train_config_caption_fix(ctx: Context, mismatched: list[tuple[SubsetPlan, Value, str]]) -> Fix | None:
    exts = {m[2] for m in mismatched}
    args = train_args_or_none(ctx)
    if len(exts) != 1 or args is None or args.config_file is None or mismatched[0][1].place.startswith("--"):
        return None
    path = args.config_file
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    layout = TomlLayout(text)
    ext = exts.pop()
    table = next((t for t, span in layout.tables.items() if len(t) <= 1 and "caption_extension" in span.keys), ())
    edit = _set_key(text, layout, table, "caption_extension", _toml_str(ext))
    if edit is None:
        return None
    return _edit_fix(path, text, [edit], _expect_changes(data, [(table, "caption_extension", ext)]),
                     f"set caption_extension = {ext} in the training config, the extension the caption files use")


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
        return Result.fail(str(exc), plan.notes, hint="fix the setting named above; sd-scripts stops before the "
                           "first step (or, with no data, exits 0 without training)")
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


__all__ = ["captions", "compute_steps", "dataset_step_plan", "images", "paths", "schema", "steps"]
