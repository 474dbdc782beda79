"""The args gate: the training arguments are options of THIS checkout's script, their values have the type
and choices sd-scripts expects, their combinations are ones sd-scripts accepts, and the run has somewhere to
write its results.

sd-scripts merges `--config_file X.toml` into its arguments without argparse's checks: an unknown key is
dropped silently and a value of the wrong type gets through (`mixed_precision = "fp32"`, `resolution = 512`),
and many combinations are asserted only after the model is loaded. The options are read statically from the
checkout (lorasetup.sd.argspec); the rules quote the assertion sd-scripts would stop with.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.checks import check
from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.result import Fix, Result
from lorasetup.engine.tomledit import toml_value
from lorasetup.sd import argfix
from lorasetup.sd import facts as sdfacts
from lorasetup.sd.argfix import ArgChange
from lorasetup.sd.argspec import ArgSpec, Option
from lorasetup.sd.trainargs import (
    CliFlag,
    TrainArgs,
    argspec,
    convert,
    path_setting,
    prefetch_spec,
    train_args,
)

REQUIRES = ("repo.present",)
NO_ARGS_HINT = ("pass the training config with `--train-config config.toml` (sd-scripts' --config_file) and "
                "any extra sd-scripts arguments after `--`")


# --- what sd-scripts will see --------------------------------------------------------------------------

def _spec(ctx: Context) -> ArgSpec:
    return argspec(ctx)


def _args(ctx: Context) -> TrainArgs:
    """The namespace, with this checkout's options (raises a clear CheckFailed when they cannot be read)."""
    _spec(ctx)
    return train_args(ctx)


def _prefetch(ctx: Context) -> None:
    prefetch_spec(ctx)


# --- args.known ------------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = argfix.render(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar_problem(opt: Option, value: Any) -> str | None:
    """Why a TOML scalar does not fit the option's type and choices (None when it does)."""
    kind = opt.type or "str"
    if isinstance(value, dict):
        return f"is a table; expected {opt.describe()}"
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return f"is the float {_short(value)}; expected an integer: write {int(value)}"
        return f"is {_kind(value)}; expected an integer (sd-scripts does not convert TOML values)"
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        hint = ""
        if isinstance(value, str):
            try:
                hint = f": write {float(value)!r} without quotes"
            except ValueError:
                pass
        return f"is {_kind(value)}; expected a number{hint} (sd-scripts does not convert TOML values; " \
               f"arithmetic on it fails mid-run)"
    if kind in ("str", "path") and not isinstance(value, str):
        if opt.dest == "resolution":
            return (f"is {_kind(value)}; sd-scripts expects the string \"W,H\": it stops with "
                    f"\"'{type(value).__name__}' object has no attribute 'split'\". Write resolution = \"512,512\"")
        return f"is {_kind(value)}; expected a string: write {opt.dest} = {json.dumps(argfix.render(value))}"
    if kind == "bool" and not isinstance(value, bool):
        return f"is {_kind(value)}; expected true or false"
    if opt.choices is not None and value not in opt.choices:
        shown = ", ".join("none" if c is None else json.dumps(c) if isinstance(c, str) else str(c)
                          for c in opt.choices)
        close = difflib.get_close_matches(str(value).lower(), [str(c) for c in opt.choices if c is not None], n=1)
        suggestion = f"; did you mean {json.dumps(close[0])}?" if close else ""
        return f"is not one of {shown} (argparse checks this only on the command line){suggestion}"
    return None


def toml_value_problem(opt: Option, value: Any) -> str | None:
    """Why a value from the TOML would misbehave in sd-scripts, which uses it as is."""
    if opt.action in ("store_true", "store_false"):
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            return (f"is the string {_short(value)}: any non-empty string counts as true, so \"false\" turns "
                    f"it ON. Write {opt.dest} = true or false, without quotes")
        return f"is {_kind(value)}; expected true or false"
    if not opt.takes_value:
        return None
    if opt.type not in (None, "int", "float", "str", "path", "bool"):
        return f"is {_kind(value)}; expected a plain value" if isinstance(value, dict) else None
    if opt.is_list:
        if isinstance(value, list):
            for i, item in enumerate(value):
                problem = _scalar_problem(opt, item)
                if problem:
                    return f"item {i} ({_short(item)}) {problem}"
            return None
        if isinstance(value, str) and opt.type in (None, "str", "path"):
            example = argfix.render(value.split())
            return (f"is a single string; expected a list of strings: sd-scripts walks it one character at a "
                    f"time (for {opt.dest} that fails with \"not enough values to unpack\"). "
                    f"Write {opt.dest} = {example}")
        return _scalar_problem(opt, value)
    if isinstance(value, list):
        if opt.dest == "resolution":
            return (f"is a list; sd-scripts expects the string \"W,H\" here (lists are for the dataset config): it "
                    f"stops with \"'list' object has no attribute 'split'\". Write resolution = "
                    f"\"{','.join(str(v) for v in value)}\"")
        return f"is a list; expected {opt.describe()}"
    return _scalar_problem(opt, value)


def _outside_choices_only(opt: Option, value: Any) -> bool:
    """The value has the option's type but is not one of its choices."""
    return opt.choices is not None and value not in opt.choices and \
        _scalar_problem(Option(opt.dest, opt.flags, opt.action, opt.type), value) is None


def cli_problem(opt: Option, flag: CliFlag) -> str | None:
    """argparse's own error for this flag and its values (None when it parses)."""
    if opt.action in ("store_true", "store_false", "store_const", "count", "append_const", "help", "version"):
        if flag.inline:
            return f"argument {flag.name}: ignored explicit argument '{flag.values[0]}'"
        if flag.values:
            return f"unrecognized arguments: {' '.join(flag.values)} ({flag.name} takes no value)"
        return None
    n = len(flag.values)
    nargs = opt.nargs
    if nargs is None and n != 1:
        return f"argument {flag.name}: expected one argument" if n == 0 else \
            f"unrecognized arguments: {' '.join(flag.values[1:])} ({flag.name} takes one value)"
    if nargs == "+" and n == 0:
        return f"argument {flag.name}: expected at least one argument"
    if nargs == "?" and n > 1:
        return f"unrecognized arguments: {' '.join(flag.values[1:])}"
    if isinstance(nargs, int) and n != nargs:
        return f"argument {flag.name}: expected {nargs} arguments"
    for text in flag.values:
        try:
            value = convert(opt, text)
        except ValueError:
            return f"argument {flag.name}: invalid {opt.type} value: '{text}'"
        if opt.choices is not None and value not in opt.choices:
            shown = ", ".join(repr(c) for c in opt.choices)
            return f"argument {flag.name}: invalid choice: '{text}' (choose from {shown})"
    return None


@dataclass
class Known:
    """What args.known found: failures, kohya_ss GUI notes, and the corrections it can make."""

    problems: list[str] = field(default_factory=list)
    unknown: int = 0
    gui_only: list[str] = field(default_factory=list)
    gui_values: list[str] = field(default_factory=list)
    changes: list[ArgChange] = field(default_factory=list)
    meant: list[str] = field(default_factory=list)  # what each value correction changes, for the fix


@check("args.known", "every training argument is an option of this checkout's script, with a valid value",
       requires=REQUIRES, prefetch=_prefetch,
       fixes="renames a misspelt option with one clear did-you-mean and rewrites a TOML value of the wrong type as "
             "meant, in the file that sets it (--yes); for arguments after -- it prints the corrected command")
def known(ctx: Context) -> Result:
    args = _args(ctx)
    if args.config_file is None and not args.cli and not args.stray:
        return Result.skip("no training arguments given", hint=NO_ARGS_HINT)
    found = Known()
    _known_toml(ctx, args, found)
    _known_cli(args, found)
    return _known_result(ctx, args, found)


def _root(ctx: Context) -> Path:
    """The sd-scripts tree (the args checks require repo.present, so there is one)."""
    root = ctx.target.sd_scripts
    assert root is not None
    return root


def _opts(args: TrainArgs) -> ArgSpec:
    assert args.spec is not None  # _args() loaded it
    return args.spec


def _known_toml(ctx: Context, args: TrainArgs, found: Known) -> None:
    spec, script = _opts(args), ctx.target.script
    for item in args.toml:
        opt = spec.get(item.key)
        if opt is None and item.key in gui_keys(ctx):
            found.gui_only.append(item.key)
        elif opt is None:
            found.unknown += 1
            suggestion = spec.suggest(item.key)
            mean = f" Did you mean `{suggestion}`?" if suggestion else ""
            found.problems.append(f"{item.place}: `{item.key}` is not an option of {script}; sd-scripts drops it "
                                  f"silently.{mean}")
            _rename(args, item.key, found)
            continue
        problem = toml_value_problem(opt, item.value) if opt is not None else None
        if problem and item.key in gui_keys(ctx) and opt is not None and _outside_choices_only(opt, item.value):
            found.gui_values.append(f"{item.place}: `{item.key} = {_short(item.value)}` {problem}; the kohya_ss GUI "
                                    f"writes this key itself, and sd-scripts uses the value as is")
        elif problem and opt is not None:
            found.problems.append(f"{item.place}: `{item.key} = {_short(item.value)}` {problem}")
            _correct(opt, item.value, item.place, found)


def _rename(args: TrainArgs, wrong: str, found: Known) -> None:
    """A rename, when the misspelling has one clear match that is not set already."""
    right = _opts(args).clear_suggestion(wrong)
    if right is not None and not args.given(right):
        found.changes.append(ArgChange(right, rename_from=wrong))


def _correct(opt: Option, value: Any, place: str, found: Known) -> None:
    correction = meant(opt, value)
    if correction is not None:
        new, difference = correction
        found.changes.append(ArgChange(opt.dest, new))
        found.meant.append(f"{place}: {_short(value)} -> {toml_value(new)} ({difference})")


def _known_cli(args: TrainArgs, found: Known) -> None:
    spec = _opts(args)
    for token in args.stray:
        found.problems.append(f"`{token}` (after --, before any flag): argparse stops with \"unrecognized "
                              f"arguments: {token}\"")
    for flag in args.cli:
        if flag.name in ("-h", "--help"):
            found.problems.append(f"{flag.token}: prints the options and exits without training")
            continue
        matches = spec.match_flag(flag.name)
        if not matches:
            found.unknown += 1
            suggestion = spec.suggest(flag.name)
            mean = f" Did you mean `--{suggestion}`?" if suggestion else ""
            dashes = " (sd-scripts' options use underscores)" if "-" in flag.name.lstrip("-") else ""
            found.problems.append(f"{flag.typed}: argparse stops at start with \"unrecognized arguments: "
                                  f"{flag.name}\"{dashes}.{mean}")
            _rename(args, flag.name, found)
        elif len(matches) > 1:
            names = ", ".join(m.flags[0] for m in matches[:6]) + (", ..." if len(matches) > 6 else "")
            found.problems.append(f"{flag.typed}: argparse stops with \"ambiguous option: {flag.name} could match "
                                  f"{names}\"; spell the option out")
        else:
            problem = cli_problem(matches[0], flag)
            if problem:
                found.problems.append(f"{flag.typed}: argparse stops with \"{problem}\"")
                if len(flag.values) == 1:
                    _correct(matches[0], flag.values[0], flag.place, found)


def _known_result(ctx: Context, args: TrainArgs, found: Known) -> Result:
    spec, script = _opts(args), ctx.target.script
    data = {"options": len(spec), "cached": spec.from_cache}
    where = f"{len(spec)} options of {script}" + (f" at {spec.commit[:8]}" if spec.commit else "")
    checked = f"{len(args.toml)} config key(s) and {len(args.cli)} flag(s)"
    notes = [f"written by the kohya_ss GUI for its own use, ignored by sd-scripts: {', '.join(found.gui_only)}"] \
        if found.gui_only else []
    if not found.problems and found.gui_values:
        return Result.warn(f"{len(found.gui_values)} value(s) outside the choices of {script}, as the kohya_ss GUI "
                           f"wrote them", found.gui_values + notes,
                           hint="usually harmless GUI defaults; check that each still means what you want", data=data)
    if not found.problems:
        return Result.ok(f"{checked}: all known options with valid values ({where})", notes, data=data)
    bad = len(found.problems) - found.unknown
    parts = [f"{found.unknown} unknown" if found.unknown else "", f"{bad} with a bad value" if bad else ""]
    target = f" in {args.config_file}" if args.config_file else ""
    hint = (f"fix the keys and values listed (TOML keys are option names without `--`); the run otherwise "
            f"trains with settings you did not ask for or dies mid-run. All options: "
            f"`{ctx.target.python_exe} {_root(ctx) / script} --help`")
    fix, extra = argfix.fix_and_hint(ctx, found.changes, "correct the misspelt options and mistyped values: "
                                     + "; ".join(found.meant or ["rename as listed"]))
    return Result.fail(f"{' and '.join(p for p in parts if p)} training argument(s){target}",
                       found.problems + [f"warning: {w}" for w in found.gui_values] + notes
                       + [f"checked against the {where}"], hint=hint + extra, fix=fix, data=data)


def meant(opt: Option, value: Any) -> tuple[Any, str] | None:
    """What a mistyped value plainly means, and how sd-scripts would read it as written; None when unclear."""
    if opt.action in ("store_true", "store_false") or opt.type == "bool":
        if isinstance(value, str) and value.strip().lower() in TRUTHY + FALSY:
            wanted = value.strip().lower() in TRUTHY
            return wanted, (f"sd-scripts takes any non-empty string as ON, so {_short(value)} was "
                            f"{'ON as meant' if wanted else 'ON, not OFF'}")
        return None
    if opt.is_list and isinstance(value, str):
        return value.split(), "sd-scripts would walk the string one character at a time"
    if isinstance(value, list) and opt.dest == "resolution" and all(isinstance(v, int) for v in value):
        return ",".join(str(v) for v in value), "sd-scripts stops on a list here ('list' has no 'split')"
    return _meant_scalar(opt, value)


TRUTHY = ("true", "yes", "on", "1")
FALSY = ("false", "no", "off", "0")


def _meant_scalar(opt: Option, value: Any) -> tuple[Any, str] | None:
    kind = opt.type or "str"
    as_is = "sd-scripts uses TOML values as they are, and arithmetic on a string fails mid-run"
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value), "sd-scripts would use the float where it needs an integer"
    if kind == "int" and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value), as_is
    if kind == "float" and isinstance(value, str):
        try:
            return float(value), as_is
        except ValueError:
            return None
    if kind in ("str", "path") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), f"sd-scripts would stop on the {type(value).__name__} ('has no attribute')"
    if opt.choices is not None and isinstance(value, str) and value not in opt.choices:
        names = [c for c in opt.choices if isinstance(c, str)]
        same = [c for c in names if c.lower() == value.lower()]
        close = same or difflib.get_close_matches(value, names, n=2, cutoff=0.8)
        if len(close) == 1:
            return close[0], f"sd-scripts would pass {_short(value)} on, which is not one of its choices"
    return None


def gui_keys(ctx: Context) -> frozenset[str]:
    """The keys the kohya_ss GUI writes into its training TOML (`config_toml_data = {...}` in kohya_gui/*.py),
    read from the checkout. Some are the GUI's own bookkeeping (`epoch`, `noise_offset_type`) that sd-scripts
    ignores. Empty for a bare sd-scripts checkout."""
    def read() -> frozenset[str]:
        root = ctx.target.kohya_root
        if root is None or ctx.target.layout != "kohya_ss":
            return frozenset()
        keys: set[str] = set()
        for path in sorted((root / "kohya_gui").glob("*.py")):
            try:
                text = files.read_source(path)
                if "config_toml_data" not in text:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(text)
            except (files.FileProblem, SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                        isinstance(t, ast.Name) and t.id == "config_toml_data" for t in node.targets):
                    keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)
                             and isinstance(k.value, str)}
        return frozenset(keys)
    return ctx.memo("args.gui_keys", read)


# --- args.rules ------------------------------------------------------------------------------------------

@dataclass
class Finding:
    fail: bool
    text: str
    fix: Fix | None = None


@dataclass
class ScriptText:
    """The code that runs for this entry script: the script and the trainer modules beside it (`chain`),
    plus the library modules it reads its options from (`library`). Comment lines are dropped."""

    chain: str
    library: str

    def asserts(self, message: str, caller: str | None = None) -> bool:
        """True when the script's code still makes this assertion; for one inside a library function, when
        the library has it and the script calls that function (`caller`)."""
        if caller is None:
            return message in self.chain
        return (message in self.chain or message in self.library) and caller in self.chain


COMMENT_LINE = re.compile(r"^[ \t]*#.*$", re.MULTILINE)


def _script_text(ctx: Context) -> ScriptText:
    def read() -> ScriptText:
        root = _root(ctx)
        chain: list[str] = []
        library: list[str] = []
        for rel in sorted(_spec(ctx).files):
            try:
                text = files.read_source(root / rel)
            except files.FileProblem:
                continue
            (library if "/" in rel else chain).append(COMMENT_LINE.sub("", text))
        return ScriptText("\n".join(chain), "\n".join(library))
    return ctx.memo("args.script_text", read)


class Scope:
    """A value lookup as config_util's BlueprintGenerator does it: subset, dataset, [general], then the
    training arguments."""

    def __init__(self, layers: list[tuple[Mapping[str, Any], str]], args: TrainArgs) -> None:
        self.layers, self.args = layers, args

    def lookup(self, key: str) -> tuple[Any, str, bool]:
        """(value, place, from_training_args)."""
        for table, prefix in self.layers:
            if key in table:
                return table[key], f"{prefix}.{key}", False
        setting = self.args.setting(key)
        if setting is None:
            return None, f"{key} (default)", False
        return setting.value, setting.place if setting.source != "default" else f"{key} (default)", \
            setting.source != "default"


def _dataset_config(ctx: Context) -> tuple[Path, Mapping[str, Any]] | None:
    """The dataset config as data, or None when there is none or it does not parse (dataset.schema says why)."""
    def read() -> tuple[Path, Mapping[str, Any]] | None:
        path = path_setting(ctx, "dataset_config", "dataset_config")
        if path is None:
            return None
        try:
            data = files.read_json(path) if path.suffix == ".json" else files.read_toml(path)
        except files.FileProblem:
            return None
        return (path, data) if isinstance(data, dict) else None
    return ctx.memo("args.dataset_config", read)


def _scopes(ctx: Context, args: TrainArgs) -> tuple[list[Scope], list[Scope]]:
    """(dataset scopes, subset scopes); one of each from the training arguments alone without a config."""
    found = _dataset_config(ctx)
    if found is None:
        return [Scope([], args)], [Scope([], args)]
    path, data = found
    raw_general = data.get("general")
    general: Mapping[str, Any] = raw_general if isinstance(raw_general, dict) else {}
    general_layer = (general, f"{path.name} [general]")
    datasets, subsets = [], []
    for i, dataset in enumerate(d for d in data.get("datasets", []) or [] if isinstance(d, dict)):
        layer = (dataset, f"{path.name} datasets[{i}]")
        datasets.append(Scope([layer, general_layer], args))
        for j, subset in enumerate(s for s in dataset.get("subsets", []) or [] if isinstance(s, dict)):
            subsets.append(Scope([(subset, f"{path.name} datasets[{i}].subsets[{j}]"), layer, general_layer], args))
    return datasets, subsets


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rule_caching(ctx: Context, args: TrainArgs, text: ScriptText) -> list[Finding]:
    out: list[Finding] = []
    _, subsets = _scopes(ctx, args)
    latents_msg = "when caching latents, either color_aug or random_crop cannot be used"
    # verify_training_args turns cache_latents on when cache_latents_to_disk is set (library/train_util.py)
    caching = [n for n in ("cache_latents", "cache_latents_to_disk") if args.on(n)]
    if caching and text.asserts(latents_msg):
        offenders = sorted({place for s in subsets for key in ("color_aug", "random_crop")
                            for value, place, _ in [s.lookup(key)] if value})
        if offenders:
            out.append(Finding(True, f"{args.place(caching[0])} with {', '.join(offenders)}: sd-scripts stops after "
                                     f"loading the dataset with \"{latents_msg}\". Remove color_aug/random_crop "
                                     f"there, or turn latent caching off (slower steps)"))
    te_msg = "when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, token_warmup_step " \
             "or caption_tag_dropout_rate cannot be used"
    # the SDXL/SD3/FLUX trainers turn cache_text_encoder_outputs on when ..._to_disk is set
    te_caching = [n for n in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk") if args.on(n)]
    if te_caching and text.asserts(te_msg):
        te_offenders: set[str] = set()
        for s in subsets:
            for key in ("caption_dropout_rate", "token_warmup_step", "caption_tag_dropout_rate"):
                value, place, _ = s.lookup(key)
                if (_number(value) or 0) > 0:
                    te_offenders.add(place)
            value, place, _ = s.lookup("shuffle_caption")
            if value:
                te_offenders.add(place)
        if te_offenders:
            out.append(Finding(True, f"{args.place(te_caching[0])} with {', '.join(sorted(te_offenders))}: sd-scripts "
                                     f"stops with \"{te_msg}\". Turn those off, or stop caching Text Encoder "
                                     f"outputs"))
    train_te_msg = "network for Text Encoder cannot be trained with caching Text Encoder outputs"
    if te_caching and text.asserts(train_te_msg) and not args.on("network_train_unet_only"):
        out.append(Finding(True, f"{args.place(te_caching[0])} without network_train_unet_only: sd-scripts stops "
                                 f"with \"{train_te_msg}\". Add network_train_unet_only = true"))
    return out


def _rule_precision(args: TrainArgs, text: ScriptText) -> list[Finding]:
    out: list[Finding] = []
    precision = args.get("mixed_precision", "no")
    where = args.place("mixed_precision")
    # train_network.py: `if args.full_fp16: assert ... elif args.full_bf16: assert ...`
    fp16_msg = "full_fp16 requires mixed precision='fp16'"
    bf16_msg = "full_bf16 requires mixed precision='bf16'"
    if args.on("full_fp16") and precision != "fp16" and text.asserts(fp16_msg):
        out.append(Finding(True, f"{args.place('full_fp16')} with {where} = {_short(precision)}: sd-scripts stops "
                                 f"with \"{fp16_msg}\". Set mixed_precision = \"fp16\" or drop full_fp16"))
    elif args.on("full_bf16") and not args.on("full_fp16") and precision != "bf16" and text.asserts(bf16_msg):
        out.append(Finding(True, f"{args.place('full_bf16')} with {where} = {_short(precision)}: sd-scripts stops "
                                 f"with \"{bf16_msg}\". Set mixed_precision = \"bf16\" or drop full_bf16"))
    fp8_msg = "fp8_base requires mixed precision='fp16' or 'bf16'"
    fp8 = [n for n in ("fp8_base", "fp8_base_unet") if args.on(n)]
    if fp8 and precision == "no" and text.asserts(fp8_msg):
        out.append(Finding(True, f"{args.place(fp8[0])} with {where} = \"no\": sd-scripts stops with "
                                 f"\"{fp8_msg}\". Set mixed_precision = \"bf16\" (or \"fp16\")"))
    return out


def _rule_verify(args: TrainArgs, text: ScriptText) -> list[Finding]:
    """library/train_util.py verify_training_args, sdxl_train_util.verify_sdxl_training_args and the option
    conflicts get_optimizer asserts, in their own words."""
    out: list[Finding] = []
    checks = [
        ("adaptive_noise_scale requires noise_offset", "verify_training_args(",
         args.get("adaptive_noise_scale") is not None and args.get("noise_offset") is None,
         ["adaptive_noise_scale"], "set noise_offset (e.g. 0.05) or drop adaptive_noise_scale"),
        ("scale_v_pred_loss_like_noise_pred can be enabled only with v_parameterization", "verify_training_args(",
         args.on("scale_v_pred_loss_like_noise_pred") and not args.on("v_parameterization"),
         ["scale_v_pred_loss_like_noise_pred"], "drop it, or train a v-prediction model with v_parameterization"),
        ("v_pred_like_loss cannot be enabled with v_parameterization", "verify_training_args(",
         args.on("v_pred_like_loss") and args.on("v_parameterization"),
         ["v_pred_like_loss", "v_parameterization"], "drop one of them"),
        ("v2 cannot be enabled in SDXL training", "verify_sdxl_training_args(", args.on("v2"), ["v2"],
         "drop v2 (it is for SD 2.x models)"),
        ("both option use_8bit_adam and use_lion_optimizer are specified", "get_optimizer(",
         args.on("use_8bit_adam") and args.on("use_lion_optimizer"), ["use_8bit_adam", "use_lion_optimizer"],
         "keep one; better, use optimizer_type"),
        ("both option use_8bit_adam and optimizer_type are specified", "get_optimizer(",
         args.on("use_8bit_adam") and bool(args.get("optimizer_type")), ["use_8bit_adam", "optimizer_type"],
         "drop use_8bit_adam and set optimizer_type = \"AdamW8bit\""),
        ("both option use_lion_optimizer and optimizer_type are specified", "get_optimizer(",
         args.on("use_lion_optimizer") and not args.on("use_8bit_adam") and bool(args.get("optimizer_type")),
         ["use_lion_optimizer", "optimizer_type"], "drop use_lion_optimizer and set optimizer_type = \"Lion\""),
        ("fused_backward_pass currently only works with optimizer_type Adafactor", "get_optimizer(",
         args.on("fused_backward_pass") and _optimizer(args) != "adafactor", ["fused_backward_pass", "optimizer_type"],
         "drop fused_backward_pass or use optimizer_type = \"Adafactor\""),
        ("fused_backward_pass does not work with gradient_accumulation_steps > 1", "get_optimizer(",
         args.on("fused_backward_pass") and _optimizer(args) == "adafactor"
         and args.get("gradient_accumulation_steps", 1) != 1,
         ["fused_backward_pass", "gradient_accumulation_steps"], "drop one of them"),
    ]
    for message, caller, violated, names, remedy in checks:
        if violated and text.asserts(message, caller):
            places = ", ".join(args.place(n) for n in names)
            out.append(Finding(True, f"{places}: sd-scripts stops with \"{message}\"; {remedy}"))
    return out


def _optimizer(args: TrainArgs) -> str:
    """The optimizer name get_optimizer ends up with, lower-cased (library/train_util.py)."""
    if args.on("use_8bit_adam"):
        return "adamw8bit"
    if args.on("use_lion_optimizer"):
        return "lion"
    name = args.get("optimizer_type")
    return name.lower() if isinstance(name, str) and name else "adamw"


def _kv_problem(token: Any, literal: bool) -> str | None:
    """What `key, value = arg.split("=")` (+ ast.literal_eval) makes of one token."""
    if not isinstance(token, str):
        return f"is {_kind(token)}, not a `key=value` string"
    parts = token.split("=", 1 if not literal else -1)
    if len(parts) < 2:
        return "has no `=`: sd-scripts stops with \"not enough values to unpack (expected 2, got 1)\""
    if len(parts) > 2:
        return "has more than one `=`: sd-scripts stops with \"too many values to unpack (expected 2)\""
    if literal:
        try:
            ast.literal_eval(parts[1])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            reason = "malformed node or string" if isinstance(exc, ValueError) else type(exc).__name__
            return (f"has a value that is not a Python literal: sd-scripts' ast.literal_eval stops with "
                    f"\"{reason}\". Quote strings ({parts[0]}='{parts[1]}') and write booleans as True/False")
    return None


def _rule_kv(args: TrainArgs) -> list[Finding]:
    out: list[Finding] = []
    # train_network.py: `key, value = net_arg.split("=", 1)` (values stay strings);
    # library/train_util.py get_optimizer / get_scheduler_fix: `key, value = arg.split("=")` then
    # `ast.literal_eval(value)`.
    for name, literal in (("network_args", False), ("optimizer_args", True), ("lr_scheduler_args", True)):
        value = args.get(name)
        if name not in _opts(args) or not isinstance(value, list):
            continue  # a plain string here is reported by args.known
        for token in value:
            problem = _kv_problem(token, literal)
            if problem:
                out.append(Finding(True, f"{args.place(name)}: `{_short(token, 40)}` {problem}"))
    return out


def _rule_buckets(ctx: Context, args: TrainArgs) -> list[Finding]:
    out: list[Finding] = []
    datasets, _ = _scopes(ctx, args)
    steps_setting = args.setting("bucket_reso_steps")
    divisor = sdfacts.bucket_divisor(_root(ctx) / ctx.target.script)
    steps_value = steps_setting.value if steps_setting else None
    used = [s for s in datasets if s.lookup("bucket_reso_steps")[2]]
    if (divisor and steps_setting is not None and args.given("bucket_reso_steps") and used
            and isinstance(steps_value, int)
            and not isinstance(steps_value, bool) and (steps_value < 1 or steps_value % divisor)):
        message = f"bucket_reso_steps is {steps_value}. it must be divisible by {divisor}."
        fix = _bucket_fix(args, steps_value, divisor) if steps_setting.source == "toml" else None
        how = "" if fix else f" Pass --bucket_reso_steps {divisor}."
        out.append(Finding(True, f"{steps_setting.place} = {steps_value}: {ctx.target.script} stops after loading "
                                 f"the dataset with \"{message}\"{how}", fix))
    resolution = args.setting("resolution")
    if resolution and resolution.source != "default" and isinstance(resolution.value, str):
        problem = _resolution_problem(resolution.value)
        if problem:
            out.append(Finding(True, f"{resolution.place} = {_short(resolution.value)}: {problem}. Write "
                                     f"resolution = \"512\" or \"768,512\""))
    for scope in datasets:
        out += _bucket_range(scope)
    return out


def _resolution_problem(text: str) -> str | None:
    """library/train_util.py prepare_dataset_args: `tuple(int(r) for r in resolution.split(","))`, 1 or 2."""
    try:
        sizes = [int(r) for r in text.split(",")]
    except ValueError:
        return "sd-scripts stops with \"invalid literal for int()\" reading it"
    if len(sizes) not in (1, 2):
        return "sd-scripts stops with \"resolution must be 'size' or 'width,height'\""
    if min(sizes) <= 0:
        return "a size must be positive"
    return None


def _bucket_range(scope: Scope) -> list[Finding]:
    """train_util.BaseDataset.adjust_min_max_bucket_reso_by_steps, for what the training arguments set."""
    enable, _, enable_from_args = scope.lookup("enable_bucket")
    raw, reso_place, reso_from_args = scope.lookup("resolution")
    low, low_place, low_from_args = scope.lookup("min_bucket_reso")
    high, high_place, high_from_args = scope.lookup("max_bucket_reso")
    steps, _, _ = scope.lookup("bucket_reso_steps")
    if not enable or not any((enable_from_args, reso_from_args, low_from_args, high_from_args)):
        return []
    if isinstance(raw, str):
        reso = None if _resolution_problem(raw) else [int(r) for r in raw.split(",")]
    elif isinstance(raw, int) and not isinstance(raw, bool):
        reso = [raw]
    elif isinstance(raw, list) and len(raw) == 2 and all(isinstance(r, int) for r in raw):
        reso = list(raw)
    else:
        reso = None
    numbers = [v for v in (low, high, steps) if isinstance(v, int) and not isinstance(v, bool)]
    if reso is None or len(numbers) != 3 or steps <= 0:
        return []
    low = low - low % steps
    high = high + (steps - high % steps) % steps
    out = []
    if min(reso) < low:
        out.append(Finding(True, f"{low_place} = {low} with {reso_place} = {_short(raw)}: sd-scripts stops with "
                                 f"\"min_bucket_reso must be equal or less than resolution\". Lower min_bucket_reso"))
    if max(reso) > high:
        out.append(Finding(True, f"{high_place} = {high} with {reso_place} = {_short(raw)}: sd-scripts stops with "
                                 f"\"max_bucket_reso must be equal or greater than resolution\". Raise "
                                 f"max_bucket_reso"))
    return out


def _rule_network(ctx: Context, args: TrainArgs) -> list[Finding]:
    out: list[Finding] = []
    if "network_module" not in _opts(args):
        return out
    root = _root(ctx)
    module = args.get("network_module")
    if not module:
        family = ctx.target.script.split("_train_network")[0] if "_train_network" in ctx.target.script else ""
        suggestion = f"networks.lora_{family}" if family and _module_file(root, f"networks.lora_{family}") \
            else "networks.lora"
        out.append(Finding(True, f"network_module is not set (it has no default): {ctx.target.script} loads the "
                                 f"model, then crashes with \"'NoneType' object has no attribute 'startswith'\" "
                                 f"in importlib.import_module. Add network_module = \"{suggestion}\""))
    elif isinstance(module, str) and module.split(".")[0] == "networks" and _module_file(root, module) is None:
        present = sorted(p.stem for p in (root / "networks").glob("*.py") if p.stem != "__init__")
        close = difflib.get_close_matches(module.split(".", 1)[-1], present, n=1)
        mean = f" Did you mean \"networks.{close[0]}\"?" if close else ""
        out.append(Finding(True, f"{args.place('network_module')} = \"{module}\": no such file in {root / 'networks'}; "
                                 f"sd-scripts stops with \"No module named '{module}'\".{mean}"))
    dim = args.get("network_dim", sdfacts.NETWORK_DEFAULTS["network_dim"])
    alpha = args.get("network_alpha", sdfacts.NETWORK_DEFAULTS["network_alpha"])
    if _number(dim) and _number(alpha) is not None and alpha > dim:
        out.append(Finding(False, f"{args.place('network_alpha')} = {alpha} > {args.place('network_dim')} = {dim}: "
                                  f"LoRA updates are scaled by alpha/dim = {alpha / dim:g}, so the effective learning "
                                  f"rate is multiplied; alpha <= dim is usual (e.g. alpha = dim / 2)"))
    return out


def _rule_adaptive(args: TrainArgs) -> list[Finding]:
    """library/train_util.py get_optimizer warns for D-Adaptation and Prodigy with lr <= 0.1."""
    optimizer = _optimizer(args)
    if not (optimizer.startswith("dadapt") or optimizer == "prodigy"):
        return []
    base = args.get("learning_rate")
    unet = args.get("unet_lr", base)
    te = args.get("text_encoder_lr", base)
    te = te[0] if isinstance(te, list) and te else (base if isinstance(te, list) else te)
    lrs = {"unet_lr" if args.given("unet_lr") else "learning_rate": unet}
    if not args.on("network_train_unet_only"):
        lrs["text_encoder_lr" if args.given("text_encoder_lr") else "learning_rate"] = te
    out = []
    low = {name: lr for name, lr in lrs.items() if _number(lr) is not None and lr <= 0.1}
    if low:
        shown = ", ".join(f"{args.place(n)} = {lr:g}" for n, lr in low.items())
        out.append(Finding(False, f"optimizer_type {args.get('optimizer_type')!r} adapts its own step size and "
                                  f"expects lr around 1.0, but {shown}: sd-scripts warns \"learning rate is too low. "
                                  f"If using D-Adaptation or Prodigy, set learning rate around 1.0\" and the LoRA "
                                  f"barely trains"))
    numeric = {lr for lr in lrs.values() if _number(lr) is not None}
    if len(numeric) > 1:
        out.append(Finding(False, f"different learning rates for U-Net and Text Encoder with {optimizer}: sd-scripts "
                                  f"warns \"when multiple learning rates are specified with dadaptation (e.g. for "
                                  f"Text Encoder and U-Net), only the first one will take effect\""))
    return out


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _bucket_fix(args: TrainArgs, old: int, new: int) -> Fix | None:
    path = args.config_file
    if path is None:
        return None
    fix, _ = argfix.plan(args, [ArgChange("bucket_reso_steps", new)]).fix(
        f"set bucket_reso_steps = {new} in {path} (the divisor the script demands)", safe=True)
    return fix


@check("args.rules", "the argument combinations pass the checks sd-scripts makes only after loading the model",
       requires=REQUIRES, prefetch=_prefetch,
       fixes="sets bucket_reso_steps to the script's divisor in the training TOML (safe)")
def rules(ctx: Context) -> Result:
    args = _args(ctx)
    if args.config_file is None and not args.cli:
        return Result.skip("no training arguments given", hint=NO_ARGS_HINT)
    text = _script_text(ctx)
    findings = (_rule_caching(ctx, args, text) + _rule_precision(args, text) + _rule_verify(args, text)
                + _rule_kv(args) + _rule_buckets(ctx, args) + _rule_network(ctx, args) + _rule_adaptive(args))
    fails = [f for f in findings if f.fail]
    warns = [f for f in findings if not f.fail]
    fix = next((f.fix for f in findings if f.fix), None)
    details = [f.text for f in fails] + [f"warning: {f.text}" for f in warns]
    if fails:
        return Result.fail(f"{len(fails)} argument combination(s) sd-scripts rejects after loading the model",
                           details, fix=fix,
                           hint="each line says what to change; without it the run dies in its first minutes, "
                                "after the model has loaded" + (" (`lorasetup bootstrap --fix` applies the safe one)"
                                                                if fix else ""))
    if warns:
        return Result.warn(f"{len(warns)} questionable setting(s)", details,
                           hint="the run starts, but may not learn what you expect; see each line")
    return Result.ok("caching, precision, key=value args, buckets, resolution and network settings are consistent")


# --- args.output -----------------------------------------------------------------------------------------

# LoRA parameters per unit of rank: the sum of in+out features over the Linear (and 1x1 conv) layers
# networks/lora*.py wraps, from each architecture's published shapes. U-Net / DiT first, text encoders second.
# SD1: 16 transformer blocks, 32*C + 2*768 each (C = 320/640/1280) -> 423,936; CLIP-L 12 layers x 13,824.
# SD2: context 1024 -> 432,128; OpenCLIP-H 23 layers x 18,432. SDXL: 70 transformer layers at 640/1280 with
# context 2048 -> 2,659,840; CLIP-L + OpenCLIP-bigG (32 x 23,040). FLUX.1: 19 double + 38 single blocks at
# 3072 -> 4,786,176; CLIP-L. Conv layers (conv_dim in network_args) are not counted.
PARAMS_PER_RANK: dict[str, tuple[int, int]] = {
    "sd1": (423_936, 165_888),
    "sd2": (432_128, 423_936),
    "sdxl": (2_659_840, 903_168),
    "flux": (4_786_176, 165_888),
}
STATE_BYTES_PER_PARAM = 12  # a saved state: fp32 weights + two fp32 AdamW moments (estimate)


def _family(script: str, args: TrainArgs) -> str | None:
    if script.startswith("sdxl_"):
        return "sdxl"
    if script.startswith("flux_"):
        return "flux"
    if script == "train_network.py":
        return "sd2" if args.on("v2") else "sd1"
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def save_counts(args: TrainArgs) -> tuple[int, int, list[str]]:
    """(model files kept, state folders kept, what cannot be counted before the dataset is), following
    train_network.py's save schedule and library/train_util.py get_remove_*_no / save_and_remove_state_*."""
    epochs = _positive_int(args.get("max_train_epochs"))
    steps = None if epochs else _positive_int(args.get("max_train_steps"))
    save_state = args.on("save_state")
    files, states = 1, 1 if (save_state or args.on("save_state_on_train_end")) else 0
    unknown: list[str] = []
    schedules: list[tuple[int | None, Callable[[int], int], str, str, str]] = []
    every_steps = _positive_int(args.get("save_every_n_steps"))
    if every_steps:
        per = every_steps
        schedules.append((steps // every_steps if steps else None, lambda last: last // per + 1,
                          "save_last_n_steps", f"every {every_steps} steps", "step"))
    every_epochs = _positive_int(args.get("save_every_n_epochs"))
    ratio = _positive_int(args.get("save_n_epoch_ratio"))
    if ratio and epochs:  # train_network.py: save_every_n_epochs = floor(epochs / save_n_epoch_ratio) or 1
        every_epochs = epochs // ratio or 1
    if every_epochs or ratio:
        made = (epochs - 1) // every_epochs if epochs and every_epochs else ratio
        schedules.append((made, lambda last: last, "save_last_n_epochs", f"every {every_epochs} epochs", "epoch"))
    for made, keep, last_name, label, unit in schedules:
        for is_state in (False, True) if save_state else (False,):
            last = (_positive_int(args.get(f"{last_name}_state")) if is_state else None) or \
                _positive_int(args.get(last_name))
            kept = made if not last else keep(last) if made is None else min(made, keep(last))
            if kept is None:
                unknown.append(f"one {'state' if is_state else 'file'} {label} (the {unit} count depends on the "
                               f"dataset: see dataset.steps)")
            elif is_state:
                states += kept
            else:
                files += kept
    return files, states, unknown


CONTROL_HINT = ("a Windows path in a double-quoted TOML string turns \\t, \\n, \\b ... into control "
                "characters; write it as a literal string in single quotes: output_dir = 'C:\\train\\out'")


def _control_chars(path: Path) -> str:
    """`a TAB`, `a NUL` ... when the path holds control characters (the double-quoted Windows path trap)."""
    names = {"\t": "a TAB", "\n": "a newline", "\r": "a carriage return", "\b": "a backspace", "\f": "a form feed",
             "\x00": "a NUL"}
    found = [names.get(c, f"control character U+{ord(c):04X}") for c in str(path) if ord(c) < 32 or ord(c) == 127]
    return ", ".join(dict.fromkeys(found))


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def _dir_problem(path: Path, what: str) -> str | None:
    """Why sd-scripts' os.makedirs(path) and writes into it would fail (None when they would not)."""
    control = _control_chars(path)
    if control:
        return f"{what} {str(path)!r} contains {control}: {CONTROL_HINT}"
    if path.exists():
        if not path.is_dir():
            return f"{what} {path} exists but is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{what} {path} is not writable: the first save fails with \"Permission denied\""
        return None
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"{what} {path} cannot be created: {base} is a file"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be created: {base} is not writable (\"Permission denied\")"
    return None


def _mb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _arg_path(args: TrainArgs, name: str) -> Path | None:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


@check("args.output", "output and log folders are writable, with disk space for the checkpoints",
       requires=REQUIRES, prefetch=_prefetch)
def output(ctx: Context) -> Result:
    args = _args(ctx)
    if args.config_file is None and not args.cli and ctx.target.output_dir is None:
        return Result.skip("no training arguments given", hint=NO_ARGS_HINT)
    fails: list[str] = []
    warns: list[str] = []
    info: list[str] = []
    out_dir = path_setting(ctx, "output_dir", "output_dir")
    if out_dir is None:
        fails.append("output_dir is not set: the whole run trains, then crashes at the first save in "
                     "os.makedirs(args.output_dir) (inferred from train_network.py save_model)")
    else:
        problem = _dir_problem(out_dir, "output_dir")
        if problem:
            fails.append(problem)
        else:
            info.append(f"output_dir {out_dir} ({'exists' if out_dir.exists() else 'will be created'})")
            fails += _disk(ctx, args, out_dir, info)
    fails += _logging(args, ctx, info)
    prompts_fail, prompts_warn = _prompts(args)
    fails += prompts_fail
    warns += prompts_warn
    if fails:
        return Result.fail(fails[0] if len(fails) == 1 else f"{len(fails)} problems with where the run writes",
                           fails + [f"warning: {w}" for w in warns] + info,
                           hint="set output_dir (and logging_dir) to folders you can write to, on a disk with room "
                                "for the checkpoints; otherwise the run dies at its first save or log write")
    if warns:
        return Result.warn(warns[0] if len(warns) == 1 else f"{len(warns)} warnings about outputs", warns + info)
    return Result.ok(info[0] if info else "outputs are writable", info[1:])


def _disk(ctx: Context, args: TrainArgs, out_dir: Path, info: list[str]) -> list[str]:
    family = _family(ctx.target.script, args)
    if family is None:
        info.append(f"checkpoint size not estimated for {ctx.target.script}")
        return []
    dim = args.get("network_dim", sdfacts.NETWORK_DEFAULTS["network_dim"])
    if not _positive_int(dim):
        return []
    unet, te = PARAMS_PER_RANK[family]
    params = dim * ((0 if args.on("network_train_text_encoder_only") else unet)
                    + (0 if args.on("network_train_unet_only") else te))
    precision = args.get("save_precision")
    width = 2 if precision in ("fp16", "bf16") or (precision is None and
                                                   (args.on("full_fp16") or args.on("full_bf16"))) else 4
    file_bytes, state_bytes = params * width, params * STATE_BYTES_PER_PARAM
    files, states, unknown = save_counts(args)
    needed = files * file_bytes + states * state_bytes
    free = shutil.disk_usage(_nearest_existing(out_dir)).free
    plan = f"{files} LoRA file(s) of about {_mb(file_bytes)} ({family}, rank {dim})" + \
        (f" and {states} saved state(s) of about {_mb(state_bytes)}" if states else "")
    info.append(f"saves: {plan}; {_mb(needed)} needed, {_mb(free)} free")
    info += [f"plus {u}" for u in unknown]
    if free < needed:
        return [(f"not enough disk for the checkpoints in {out_dir}: {plan} need about {_mb(needed)}, "
                 f"{_mb(free)} free; the run dies with \"No space left on device\" at a save")]
    return []


def _logging(args: TrainArgs, ctx: Context, info: list[str]) -> list[str]:
    log_with = args.get("log_with")
    logging_dir = _arg_path(args, "logging_dir")
    required = "logging_dir is required when log_with is tensorboard"
    if log_with in ("tensorboard", "all") and logging_dir is None and required in _script_text(ctx).library:
        return [(f"{args.place('log_with')} = \"{log_with}\" without logging_dir: sd-scripts stops at start with "
                 f"\"{required}\". Set logging_dir = \"logs\"")]
    if logging_dir is not None:
        problem = _dir_problem(logging_dir, "logging_dir")
        if problem:
            return [problem]
        info.append(f"logging_dir {logging_dir} ({log_with or 'tensorboard'})")
    return []


def _prompts(args: TrainArgs) -> tuple[list[str], list[str]]:
    """library/train_util.py sample_images_common: a schedule without a prompt file crashes (os.path.isfile(None));
    a missing file only logs "No prompt file"; an extension other than .txt/.toml/.json crashes."""
    schedule = [n for n in ("sample_every_n_steps", "sample_every_n_epochs") if _positive_int(args.get(n))]
    schedule += ["sample_at_first"] if args.on("sample_at_first") else []
    if "sample_prompts" not in _opts(args):
        return [], []
    prompts = _arg_path(args, "sample_prompts")
    if not schedule:
        return [], []
    when = args.place(schedule[0])
    if prompts is None:
        return [(f"{when} schedules sample images but sample_prompts is not set: the run crashes at the first sample "
                 f"with \"stat: path should be string, bytes, os.PathLike or integer, not NoneType\"")], []
    control = _control_chars(prompts)
    if control:
        return [f"{args.place('sample_prompts')} {str(prompts)!r} contains {control}: {CONTROL_HINT}"], []
    if prompts.suffix not in (".txt", ".toml", ".json"):
        return [(f"{args.place('sample_prompts')} = {prompts}: sd-scripts reads only .txt, .toml or .json prompt "
                 f"files; any other name crashes at the first sample (UnboundLocalError: 'prompts')")], []
    if not prompts.is_file():
        what = files.describe(prompts) + (", not a file" if prompts.exists() else "")
        return [], [(f"{args.place('sample_prompts')}: {prompts} {what}: sd-scripts logs \"No prompt file\" "
                     "and trains without sample images")]
    problem = _prompt_file_problem(prompts)
    if problem:
        return [f"{args.place('sample_prompts')}: {problem}; the run crashes when it reads the prompts, at the first "
                f"sample ({when})"], []
    return [], []


def _prompt_file_problem(prompts: Path) -> str | None:
    """What makes sd-scripts' load_prompts crash on an existing prompt file (open as UTF-8, then toml.load or
    json.load by suffix), or None."""
    try:
        if prompts.suffix == ".toml":
            files.read_toml(prompts)
        elif prompts.suffix == ".json":
            files.read_json(prompts)
        else:
            files.read_text(prompts)
    except files.FileProblem as exc:
        return None if exc.kind == "too-large" else exc.summary
    return None
