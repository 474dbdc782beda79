"""The one training-interpreter process per run that imports the training stack.

The program is lorasetup/sd/programs/stack.py: it imports torch and accelerate once, collects the device
facts, builds an `Accelerator` the way sd-scripts does under the environment `accelerate launch` would set from
the accelerate config, then imports the deps gate's deep-import targets (lorasetup.sd.imports.deep_targets) one
by one. `start(ctx)` launches it in the background while the static checks run; `facts(ctx)` waits for it and
returns the answer as typed StackFacts (lorasetup.sd.stackfacts); `answer(ctx)` is the answer as JSON.

When compiled code kills the interpreter (a segfault or abort leaves no Python error), the program's last
checkpoint is the answer: `crash` says what died where, earlier stages' facts are kept, an import that killed it
gets that message and later ones "not tried".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError, run_program
from lorasetup.sd import accelconfig, warm
from lorasetup.sd.imports import deep_targets
from lorasetup.sd.programs import program
from lorasetup.sd.stackfacts import StackFacts
from lorasetup.sd.trainargs import train_args

KEY = "stackprobe"  # the answer as JSON (tests put recorded answers here)
FACTS_KEY = "stackprobe:facts"
TIMEOUT_S = 240.0  # a cold first import of torch on a laptop disk can take a minute


def _deep_targets(ctx: Context) -> tuple[list[str], list[tuple[str, str]], str | None]:
    """The deps gate's deep-import targets, and the error line if computing them failed. None when deps.deep
    is not part of this run (`--skip deps.deep`): the probe then imports only torch and accelerate."""
    if ctx.planned is not None and "deps.deep" not in ctx.planned:
        return [], [], None
    try:
        modules, pairs = deep_targets(ctx)
    except Exception as exc:  # noqa: BLE001 - the deps gate reports its own failure; the device part still runs
        return [], [], f"{type(exc).__name__}: {exc}"
    return list(modules), [(m, n) for m, n in pairs], None


def params(ctx: Context) -> dict[str, Any]:
    """What the program needs: the config file, sd-scripts' own precision, the deep-import targets."""
    target = ctx.target
    location = accelconfig.find_config(target)
    try:
        precision = accelconfig.effective_mixed_precision(train_args(ctx))[0]
        compile_on = train_args(ctx).on("torch_compile")
        dynamo = str(train_args(ctx).get("dynamo_backend", "inductor")) if compile_on else "NO"
    except Exception:  # noqa: BLE001 - an unreadable training config is reported by the args checks
        precision, dynamo = "no", "NO"
    modules, pairs, targets_error = _deep_targets(ctx)
    script = target.sd_scripts / target.script if target.sd_scripts else Path(target.script)
    return {"config_file": str(location.path), "config_explicit": location.explicit, "script": str(script),
            "mixed_precision": precision, "dynamo_backend": dynamo, "modules": modules,
            "from_imports": [list(p) for p in pairs], "targets_error": targets_error,
            "sd_scripts": str(target.sd_scripts) if target.sd_scripts else None}


def healthy(raw: dict[str, Any]) -> bool:
    """An answer worth keeping in the warm cache: it ran to the end and reports no failure at all."""
    acc = raw.get("accelerate") or {}
    errors = [raw.get(k) for k in ("torch_error", "accelerate_error", "targets_error", "crash")]
    errors += [acc.get(k) for k in ("config_error", "launch_error", "accelerator_error")]
    imports = [*(raw.get("imports") or {}).values(), *(raw.get("from_imports") or {}).values()]
    return bool(raw.get("done")) and not any(errors) and not any(imports) and bool(raw.get("torch"))


def _run(ctx: Context) -> dict[str, Any]:
    p = params(ctx)
    stack = program("stack")
    raw = warm.cached(KEY, ctx.target, stack, p, fresh=ctx.fresh, note=ctx.note, keep=healthy,
                      compute=lambda: run_program(ctx.target.python_exe, stack, p, timeout=TIMEOUT_S))
    if "imports" not in raw:
        raise ProbeError(f"the training interpreter {ctx.target.python_exe} answered without the stack facts")
    raw["targets_error"] = p["targets_error"]
    raw["crash"] = None
    if not raw.get("done"):
        mark_crash(raw, p, ctx.target.python_exe)
    return raw


def mark_crash(raw: dict[str, Any], p: dict[str, Any], python: Path) -> None:
    """Fill in what a crash in compiled code (no Python error) cut short."""
    where = raw.get("crashed_in") or raw.get("stage") or "startup"
    raw["crash"] = (f"the training interpreter {python} died during {where} with no Python error (a segfault "
                    "or abort in a compiled extension)")
    if raw.get("stage") in ("import torch", "import accelerate"):
        raw[raw["stage"].split()[1] + "_error"] = ("the interpreter died while importing it, with no Python "
                                                   "error (a segfault or abort in a compiled extension)")
    crashed = raw.get("crashed_in")
    if crashed:
        module, _, name = crashed.partition(":")
        stmt = f"from {module} import {name}" if name else f"import {crashed}"
        died = (f"the interpreter crashed while running `{stmt}` (no Python error: a segfault or abort in a "
                f"compiled extension); try: {python} -c '{stmt}'")
        not_tried = f"not tried: the interpreter crashed earlier, on {crashed}"
    else:
        died = not_tried = f"not tried: {raw['crash']}"
    for module in p["modules"]:
        raw["imports"].setdefault(module, died if module == crashed else not_tried)
    for module, name in p["from_imports"]:
        key = f"{module}:{name}"
        raw["from_imports"].setdefault(key, died if key == crashed else not_tried)


def start(ctx: Context) -> None:
    """Start the probe in the background (idempotent)."""
    ctx.prefetch(KEY, lambda: _run(ctx))


def answer(ctx: Context) -> dict[str, Any]:
    """The probe's answer as JSON (waits for a started probe, or runs it); ProbeError if it could not run."""
    return ctx.memo(KEY, lambda: _run(ctx))


def facts(ctx: Context) -> StackFacts:
    """The probe's answer as typed facts; ProbeError if it could not run or answered in another shape."""
    return ctx.memo(FACTS_KEY, lambda: StackFacts.parse(answer(ctx)))
