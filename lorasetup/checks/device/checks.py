"""The device gate: torch can use the expected device, accelerate reports that device, the mixed precision
fits it, and the training args ask nothing the device cannot do.

Facts come from the one shared training-interpreter process (lorasetup.sd.stackprobe); where the answer does not
depend on them (fp16 with `device = "cpu"`, `--xformers` off CUDA) a check answers at once without waiting.
Fixes: an accelerate config that matches the machine (safe when none exists; an existing file is backed up
and rewritten only with --yes), and training-args edits of the `--config_file` TOML, with a backup, only with
--yes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from packaging.version import Version

from lorasetup.checks import check
from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.fileedit import read_bytes
from lorasetup.engine.probe import ProbeError, run_program
from lorasetup.engine.result import Fix, FixError, Result, Status
from lorasetup.engine.tomledit import toml_value
from lorasetup.sd import accelconfig, argfix, stackprobe, warm
from lorasetup.sd.argfix import ArgChange
from lorasetup.sd.devices import available, device_lines, machine_offers, rosetta, smi_gpus, torch_facts, version
from lorasetup.sd.facts import needs_bitsandbytes
from lorasetup.sd.programs import program
from lorasetup.sd.stackfacts import AccelerateFacts, LaunchFacts, StackFacts, TorchFacts
from lorasetup.sd.trainargs import train_args

PROBED = ("preflight", "probe")
TORCH_INSTALL = "https://pytorch.org/get-started/locally/"
OPTIMIZER_TIMEOUT_S = 90.0
# accelerate >= 1.11 lets fp16/bf16 run on MPS (accelerator.py); fp16 there needs torch >= 2.5, bf16 needs
# torch >= 2.6 and macOS >= 14 (utils/imports.py is_bf16_available).
MPS_AMP_ACCELERATE = Version("1.11")
MPS_FP16_TORCH = Version("2.5")
MPS_BF16_TORCH = Version("2.6")


# --- facts ------------------------------------------------------------------------------------------------

def facts(ctx: Context) -> StackFacts:
    """The stack probe's answer (raises ProbeError when the training interpreter could not answer)."""
    return stackprobe.facts(ctx)


def wanted(ctx: Context, found: StackFacts | None) -> str | None:
    """The device training must use: the target's, or for `auto` the best the machine offers (None:
    unknown without the probe)."""
    if ctx.target.device != "auto":
        return ctx.target.device
    return machine_offers(found) if found is not None else None


# --- device.torch -----------------------------------------------------------------------------------------

def why_unavailable(found: StackFacts, device: str) -> tuple[str, str]:
    """Why torch cannot use `device` here, and what to do: (reason, hint)."""
    if device == "mps":
        return why_no_mps(found)
    if device == "cuda":
        return why_no_cuda(found)
    tv = torch_facts(found).version
    return (f"torch {tv} cannot use {device} (torch.{device}.is_available() is False)",
            f"install the torch build for {device} (see {TORCH_INSTALL}) or pick another device")


def why_no_mps(found: StackFacts) -> tuple[str, str]:
    t, py = torch_facts(found), found.python
    python = py.executable or "python"
    if rosetta(found):
        return (f"{python} is an x86_64 Python running under Rosetta on an Apple Silicon Mac: torch there has no "
                "MPS, and training runs on the CPU",
                "recreate the venv from an arm64 Python (`python3 -c 'import platform; print(platform.machine())'` "
                "must print arm64; e.g. /opt/homebrew/bin/python3.10 -m venv venv), then reinstall the requirements")
    if py.sys_platform != "darwin":
        return (f"MPS exists only on Apple Silicon Macs; this is {py.platform}",
                "set the expected device to what this machine has: `--device cuda` or `--device cpu` "
                "(device = ... in lorasetup.toml)")
    if not t.mps_built:
        return (f"torch {t.version} was built without MPS",
                f"reinstall torch from the macOS arm64 wheels: {python} -m pip install --force-reinstall "
                f"torch=={t.version.split('+')[0]} (see {TORCH_INSTALL})")
    return (f"torch {t.version} has MPS built in but cannot use it on macOS {py.mac_ver} (MPS needs Apple Silicon "
            "and macOS 12.3 or newer)", "update macOS, or train with `--device cpu` (many times slower)")


def why_no_cuda(found: StackFacts) -> tuple[str, str]:
    t, python = torch_facts(found), found.python.executable or "python"
    tv = t.version
    gpus = smi_gpus(found)
    seen = f"; nvidia-smi lists {', '.join(g.name for g in gpus)}" if gpus else ""
    if not t.cuda:
        kind = f"a ROCm {t.hip} build" if t.hip else "a CPU-only build"
        return (f"torch {tv} is {kind}{seen}",
                f"install a CUDA build of torch into the training venv: {python} -m pip install --force-reinstall "
                f"torch=={tv.split('+')[0]} torchvision --index-url https://download.pytorch.org/whl/cu<XYZ> with "
                f"the cu<XYZ> your driver supports (see {TORCH_INSTALL})")
    if t.cuda_device_count_machine and not t.cuda_device_count:
        launch = found.accelerate.launch if found.accelerate else None
        shown = launch.env.get("CUDA_VISIBLE_DEVICES") if launch else None
        return (f"accelerate's gpu_ids hide every GPU (CUDA_VISIBLE_DEVICES={shown})",
                "set gpu_ids to an existing GPU (e.g. 0) or `all` in the accelerate config")
    said = "; torch says: " + t.warnings[0].splitlines()[0] if t.warnings else ""
    if found.nvidia_smi is None:
        return (f"torch {tv} ({t.build_label()}) finds no GPU and there is no NVIDIA driver (nvidia-smi is not on "
                f"PATH){said}", "train on a machine with an NVIDIA GPU, or use `--device cpu`")
    if found.nvidia_smi.error:
        return (f"nvidia-smi fails: {found.nvidia_smi.error.splitlines()[0]}{said}",
                "repair the NVIDIA driver until `nvidia-smi` lists the GPU")
    return (f"torch {tv} ({t.build_label()}) cannot use the GPU{seen}{said}",
            f"install a torch build whose CUDA version your driver supports (see {TORCH_INSTALL})")


def unsupported_gpus(t: TorchFacts) -> list[str]:
    """GPUs whose major compute capability torch has no kernels for (torch/cuda/__init__.py _check_cubins)."""
    majors = set()
    for arch in t.cuda_arch_list:
        if arch.startswith("sm_"):
            digits = re.sub(r"\D", "", arch.split("_", 1)[1])
            if digits:
                majors.add(int(digits) // 10)
    if not majors:
        return []
    return [f"{d.name} is sm_{d.capability[0]}{d.capability[1]}; torch {t.version} has kernels for "
            f"{' '.join(t.cuda_arch_list)}" for d in t.cuda_devices if d.capability[0] not in majors]


def torch_unusable(found: StackFacts, python: str, details: list[str]) -> Result | None:
    """torch could not be imported, or died listing its devices."""
    if found.torch_error:
        return Result.fail(f"torch cannot be imported in {python}: {found.torch_error}", details,
                           hint="the run dies on its first line; see deps.* for the fix, or reinstall the "
                                "checkout's pinned torch")
    if found.crash and found.stage == "torch devices":
        return Result.fail(f"{found.crash}: torch could not even list its devices", details,
                           hint=f"see what kills it: {python} -c 'import torch; print(torch.cuda.is_available(), "
                                "torch.backends.mps.is_available())'; usually a driver or a torch build that "
                                f"does not fit this machine (see {TORCH_INSTALL})")
    return None


@check("device.torch", "torch in the training venv can use the expected device", tags=PROBED,
       prefetch=stackprobe.start, timeout_s=stackprobe.TIMEOUT_S + 10)
def torch_device(ctx: Context) -> Result:
    found = facts(ctx)
    details = device_lines(found)
    unusable = torch_unusable(found, found.python.executable or str(ctx.target.python_exe), details)
    if unusable is not None:
        return unusable
    t = torch_facts(found)
    device = wanted(ctx, found)
    assert device is not None
    asked = f"device = {ctx.target.device}" + (f" -> {device}" if ctx.target.device == "auto" else "")
    if rosetta(found):
        reason, hint = why_unavailable(found, "mps")
        return Result.fail(reason, details, hint=hint)
    if not available(found, device):
        reason, hint = why_unavailable(found, device)
        return Result.fail(f"{asked}, but {reason}", details, hint=hint)
    broken = t.device_ops.get(device)
    if broken:
        return Result.fail(f"a tiny matmul on {device} fails: {broken}", details,
                           hint=f"torch {t.version} does not work with this {device} device; install "
                                f"a build that supports it (see {TORCH_INSTALL})")
    bad = unsupported_gpus(t) if device == "cuda" else []
    if bad:
        return Result.fail(f"torch {t.version} has no kernels for this GPU: {bad[0]}", details,
                           hint=f"install a torch build made for this GPU (see {TORCH_INSTALL}); the run "
                                "would die at the first CUDA operation")
    label = f"torch {t.version} ({t.build_label()}) can use {device}"
    if device == "cpu" and ctx.target.device == "auto":
        return Result.warn(f"{label}: this machine offers no GPU, so training runs on the CPU (many times "
                           "slower than a GPU)", details,
                           hint="if that is intended, say so with `--device cpu` (device = \"cpu\")")
    return Result.ok(label, details)


# --- device.accelerate ------------------------------------------------------------------------------------

def accelerate_fix(device: str, location: accelconfig.ConfigLocation) -> Fix:
    """Write a config for one process on `device`; an existing file is backed up and needs --yes."""
    values = accelconfig.machine_config(device)
    try:
        seen = read_bytes(location.path)
    except FixError:  # a pipe or folder by that name: the guarded write refuses it, saying why, if applied
        seen = None
    path = location.path
    compact = json.dumps(values, sort_keys=True)
    commands = ([f"cp {path} {path}.bak-<timestamp>"] if seen is not None else []) + [f"write {path}: {compact}"]

    def apply() -> None:
        accelconfig.write_config(path, values, seen)
    what = "rewrite" if seen is not None else "write"
    return Fix(f"{what} the accelerate config for one process on {device}", commands, apply,
               safe=seen is None)


def accelerate_details(acc: AccelerateFacts, location: accelconfig.ConfigLocation) -> list[str]:
    """The config, what launch decided and what Accelerator() reported, one line each."""
    state = "exists" if location.exists else files.describe(location.path)
    details = [f"accelerate {acc.version}; config {location.path} ({location.origin}) {state}"]
    if acc.config:
        details.append("config: " + ", ".join(f"{k}={v}" for k, v in sorted(acc.config.items())
                                                 if not isinstance(v, (dict, list))))
    launch, report = acc.launch, acc.accelerator
    if launch:
        details.append(f"accelerate launch: {launch.launcher} launcher, {launch.num_processes} "
                       f"process(es), gpu_ids {launch.gpu_ids}, use_cpu {launch.use_cpu}")
    if report:
        how = "under that launch" if launch else "(launch's environment unknown)"
        details.append(f"Accelerator() {how}: device {report.device}, mixed_precision {report.mixed_precision}, "
                       f"distributed_type {report.distributed_type}, num_processes {report.num_processes}")
    return details


def launch_problem(found: StackFacts, launch: LaunchFacts, device: str, location: accelconfig.ConfigLocation,
                   details: list[str], fix: Fix) -> Result | None:
    """What accelerate launch's own decisions (use_cpu, processes, gpu_ids) do to a run on `device`."""
    if launch.use_cpu and device != "cpu":
        return Result.fail(
            f"use_cpu is true in {location.path}: training runs on the CPU although {device} is available",
            details, hint="`accelerate config default` writes use_cpu: true on Macs (it knows no MPS), and "
                          "accelerate launch then trains on the CPU for hours; write a config for "
                          f"{device}", fix=fix)
    t = torch_facts(found)
    visible = t.cuda_device_count or 0
    processes = launch.num_processes or 1
    if launch.launcher == "multi_gpu" and processes > visible:
        return Result.fail(
            f"{location.path} asks for a multi-GPU launch with {processes} processes, but torch sees "
            f"{visible} GPU(s)", details,
            hint=f"each process needs its own GPU; write a single-process config for {device}", fix=fix)
    machine_gpus = t.cuda_device_count_machine or len(smi_gpus(found))
    ids = str(launch.gpu_ids or "all")
    missing = [i for i in ids.split(",") if i.strip().isdigit() and int(i) >= machine_gpus] \
        if device == "cuda" and ids != "all" else []
    if missing:
        return Result.fail(f"gpu_ids {ids} in {location.path} name GPU(s) {', '.join(missing)}, but this "
                           f"machine has {machine_gpus}", details,
                           hint="set gpu_ids to existing GPUs (0 is the first) or `all`", fix=fix)
    return None


@check("device.accelerate", "accelerate launch puts training on the expected device", tags=PROBED,
       requires=("device.torch",), prefetch=stackprobe.start, timeout_s=stackprobe.TIMEOUT_S + 10,
       fixes="writes an accelerate config for one process on the expected device (safe when none exists; an "
             "existing one is backed up and rewritten with --yes)")
def accelerate_device(ctx: Context) -> Result:
    found = facts(ctx)
    acc, location = found.accelerate, accelconfig.find_config(ctx.target)
    if acc is None:
        return Result.fail(f"accelerate cannot be imported: {found.accelerate_error}",
                           hint="sd-scripts imports it first thing; see deps.* for the fix")
    if found.crash and found.stage in ("accelerate launch", "Accelerator()"):
        return Result.fail(f"{found.crash}", hint="the same happens when the run starts; reinstall the "
                                                  "checkout's pinned accelerate and torch (see deps.versions)")
    device = wanted(ctx, found)
    assert device is not None
    details = accelerate_details(acc, location)
    fix = accelerate_fix(device, location)
    if location.explicit and not location.exists:
        return Result.fail(f"the accelerate config {location.path} {files.describe(location.path)}", details,
                           hint="accelerate launch --config_file stops at once on a missing file; fix the "
                                "path or let lorasetup write one", fix=fix)
    if acc.config_error or acc.launch_error:
        return Result.fail(f"accelerate launch stops before training: {acc.config_error or acc.launch_error}",
                           details, hint=f"repair or replace {location.path}", fix=fix)
    launch = acc.launch or LaunchFacts()
    precision, _ = accelconfig.effective_mixed_precision(train_args(ctx))
    if launch.mixed_precision not in (None, precision):
        details.append(f"note: accelerate launch would use mixed_precision {launch.mixed_precision}, but "
                       f"sd-scripts passes its own ({precision}) to Accelerator(), which wins")
    problem = launch_problem(found, launch, device, location, details, fix)
    if problem is not None:
        return problem
    report = acc.accelerator
    if report is None:
        return Result.fail(f"Accelerator() cannot start: {acc.accelerator_error_no}", details,
                           hint=f"repair or replace {location.path}", fix=fix)
    if report.device.split(":")[0] != device:
        return Result.fail(f"Accelerator() reports device {report.device.split(':')[0]}, expected {device}",
                           details, hint=f"write an accelerate config for {device}", fix=fix)
    if not location.exists and launch.launcher == "multi_gpu":
        return Result.warn(f"no accelerate config: accelerate launch will start {launch.num_processes or 1} "
                           "processes, one per GPU", details, hint="if one GPU is intended, write a single-GPU config")
    source = "its config" if location.exists else "defaults (no config file)"
    return Result.ok(f"accelerate {acc.version} with {source} runs on {report.device}", details)


# --- training-args edits ----------------------------------------------------------------------------------

def args_fix(ctx: Context, edits: dict[str, Any], description: str) -> tuple[Fix | None, str]:
    """A --yes fix that changes the options where they are set (training TOML, lorasetup.toml's train_args),
    and what is left to the person (the corrected arguments after --)."""
    near = next(iter(edits))
    changes = [ArgChange(name, value, near=None if name == near else near) for name, value in edits.items()]
    return argfix.fix_and_hint(ctx, changes, description, safe=False)


def change_hint(ctx: Context, edits: dict[str, Any]) -> str:
    """How to make the change by hand, where each value is set."""
    args = train_args(ctx)
    parts = []
    for key, value in edits.items():
        setting = args.setting(key)
        source = setting.source if setting is not None else "default"
        flag = args.flag_of(key)
        if source == "toml" or (source == "default" and args.config_file is not None):
            parts.append(f"{key} = {toml_value(value)} in {args.config_file}")
        elif flag is not None and flag.origin is not None and flag.origin.file is not None:
            parts.append(f"{_cli_words(key, value)} in {flag.origin.file} (train_args)")
        else:
            parts.append(f"{_cli_words(key, value)} in the training command")
    return "; ".join(parts)


def _cli_words(key: str, value: Any) -> str:
    if value is True:
        return f"add --{key}"
    if value is False:
        return f"remove --{key}"
    return f"--{key}={value}"


def fixed_result(ctx: Context, status: Status, summary: str, hint: str, edits: dict[str, Any],
                 description: str) -> Result:
    """A failing result with the fix that makes `edits` where the values live, and the rest in the hint."""
    fix, extra = args_fix(ctx, edits, description)
    return Result(status, summary, hint=hint + extra, fix=fix)


# --- device.precision -------------------------------------------------------------------------------------

class NeedsFacts(Exception):
    """The answer depends on what the training interpreter reports."""


def precision_rules(mp: str, device: str, found: StackFacts | None) -> tuple[Status, str] | None:
    """What `mp` does on `device`: None when fine, else (status, why). Raises NeedsFacts when the answer
    depends on the probe's facts and `found` is None."""
    if mp == "no" or device == "xpu":
        return None
    if device == "cpu":
        if mp == "fp16":
            return Status.FAIL, ("accelerate starts without complaint, then the run dies at the first training "
                                 "step, after loading the model (fp16 needs a GPU)")
        return Status.WARN, ("accelerate accepts it (CPU autocast), but it is slow on CPUs without bf16 "
                             "instructions")
    if found is None:
        raise NeedsFacts(device)
    if device == "mps":
        return mps_precision(mp, found)
    if device == "cuda":
        return cuda_precision(mp, torch_facts(found))
    return None


def mps_precision(mp: str, found: StackFacts) -> tuple[Status, str] | None:
    """fp16/bf16 on MPS: accelerate >= 1.11 allows them, with torch and macOS new enough."""
    acc_v = version(found.accelerate.version if found.accelerate else None)
    torch_v = version(torch_facts(found).version)
    if acc_v is not None and acc_v < MPS_AMP_ACCELERATE:
        said = ("fp16 mixed precision requires a GPU (not 'mps')." if mp == "fp16" else
                "bf16 mixed precision requires PyTorch >= 1.10 and a supported device.")
        return Status.FAIL, (f'accelerate {acc_v} refuses {mp} on MPS ("{said}"); accelerate >= 1.11 '
                             "allows it")
    if mp == "fp16" and torch_v is not None and torch_v < MPS_FP16_TORCH:
        return Status.FAIL, f"fp16 on MPS needs torch >= 2.5; this is torch {torch_v}"
    if mp == "bf16" and torch_v is not None and torch_v < MPS_BF16_TORCH:
        return Status.FAIL, f"bf16 on MPS needs torch >= 2.6; this is torch {torch_v}"
    if mp == "bf16" and torch_facts(found).mps_macos14 is False:
        return Status.FAIL, f"bf16 on MPS needs macOS 14 or newer; this is macOS {found.python.mac_ver}"
    return None


def cuda_precision(mp: str, t: TorchFacts) -> tuple[Status, str] | None:
    """bf16 needs Ampere or newer; fp16 on a GTX 16xx gives NaN."""
    names = [d.name for d in t.cuda_devices]
    gpu = names[0] if names else "this GPU"
    if mp == "bf16" and t.cuda_bf16 is False:
        return Status.FAIL, (f"{gpu} has no bf16 (that needs compute capability 8.0, Ampere, or newer): "
                             '"bf16 mixed precision requires PyTorch >= 1.10 and a supported device."')
    if mp == "fp16" and any(re.search(r"GTX 16\d\d", n) for n in names):
        return Status.WARN, (f"fp16 on {gpu}: GTX 16xx cards produce NaN or near-empty LoRAs in fp16, "
                             "and have no bf16, so `no` is the safe choice")
    return None


NEEDS_PRECISION = {"full_fp16": ("fp16",), "full_bf16": ("bf16",), "fp8_base": ("fp16", "bf16")}


def supported_precision(mp: str, device: str, found: StackFacts | None) -> str:
    """The best mixed precision this device runs, other than `mp`: bf16, else fp16, else no (always `no` on the
    CPU, and without the probe's facts)."""
    if device == "cpu" or found is None:
        return "no"
    for candidate in ("bf16", "fp16"):
        if candidate != mp and precision_rules(candidate, device, found) is None:
            return candidate
    return "no"


def precision_edits(ctx: Context, new: str = "no") -> dict[str, Any]:
    """mixed_precision -> `new`, and the flags that need another mixed precision turned off with it."""
    edits: dict[str, Any] = {"mixed_precision": new}
    edits.update({flag: False for flag, needs in NEEDS_PRECISION.items()
                  if train_args(ctx).on(flag) and new not in needs})
    return edits


def skipped(exc: ProbeError) -> Result:
    return Result.skip(f"needs the training interpreter's answer, which failed: {str(exc).splitlines()[0]}",
                       hint="see device.torch")


def device_verdict(ctx: Context, mp: str) -> tuple[str, StackFacts | None, tuple[Status, str] | None]:
    """The device, the probe's facts when they were needed, and what `mp` does there; the probe is asked only
    when the answer depends on it."""
    device = ctx.target.device
    try:
        if device == "auto" and mp != "no":
            raise NeedsFacts(device)
        return device, None, precision_rules(mp, device, None)
    except NeedsFacts:
        pass
    found = facts(ctx)
    device = wanted(ctx, found) or device
    verdict = precision_rules(mp, device, found)
    acc = found.accelerate
    ran_on = acc.accelerator.device.split(":")[0] if acc and acc.accelerator else ""
    if acc and acc.accelerator_error and ran_on == device:
        verdict = Status.FAIL, f"accelerate {acc.version} refuses it: {acc.accelerator_error}"
    return device, found, verdict


@check("device.precision", "the mixed precision fits the device and the installed versions", tags=PROBED,
       timeout_s=stackprobe.TIMEOUT_S + 10,
       fixes="sets mixed_precision to what the device runs (no on the CPU; on MPS/CUDA the best the installed "
             "torch and accelerate allow) and turns off full_fp16/full_bf16/fp8_base that need another, where the "
             "value is set (--yes); for arguments after -- it prints the corrected command")
def precision(ctx: Context) -> Result:
    args = train_args(ctx)
    mp, place = accelconfig.effective_mixed_precision(args)
    if mp not in accelconfig.PRECISIONS:
        return fixed_result(ctx, Status.FAIL, f"mixed_precision = {mp!r} ({place}) is not one of no, fp16, bf16",
                            'Accelerator() stops at start with "Unknown mixed_precision mode"; change: '
                            + change_hint(ctx, precision_edits(ctx)), precision_edits(ctx),
                            'set mixed_precision = "no"')
    pairs_owned_by_args = ctx.planned is not None and "args.rules" in ctx.planned  # one mistake, one result
    for flag, needs in NEEDS_PRECISION.items():
        if args.on(flag) and mp not in needs and not pairs_owned_by_args:
            return fixed_result(ctx, Status.FAIL, f"{flag} ({args.place(flag)}) requires mixed precision "
                                f"{' or '.join(needs)}, but it is {mp} ({place})",
                                f'sd-scripts stops with "{flag} requires mixed precision=..." after loading the '
                                f"model; change: {change_hint(ctx, {flag: False})}", {flag: False},
                                f"turn off {flag}")
    try:
        device, found, verdict = device_verdict(ctx, mp)
    except ProbeError as exc:
        return skipped(exc)
    if verdict is None:
        where = "runs on any device" if device == "auto" else f"fits {device}"
        return Result.ok(f"mixed precision {mp} ({place}) {where}")
    status, why = verdict
    edits = precision_edits(ctx, supported_precision(mp, device, found))
    hint = (f"change: {change_hint(ctx, edits)}; sd-scripts passes its own --mixed_precision to "
            "Accelerator(), so a value in the accelerate config does not help")
    if status is Status.WARN:
        return Result.warn(f"mixed precision {mp} ({place}) on {device}: {why}", hint=hint)
    also = [k for k in edits if k != "mixed_precision"]
    turn_off = f" and turn off {', '.join(also)}" if also else ""
    return fixed_result(ctx, status, f"mixed precision {mp} ({place}) on {device}: {why}", hint, edits,
                        f"set mixed_precision = {toml_value(edits['mixed_precision'])}{turn_off}")


# --- device.features --------------------------------------------------------------------------------------

def optimizer_name(ctx: Context) -> tuple[str, str]:
    """The optimizer sd-scripts will build (library/train_util.py get_optimizer) and where it is set."""
    args = train_args(ctx)
    if args.on("use_8bit_adam"):
        return "AdamW8bit", args.place("use_8bit_adam")
    name = str(args.get("optimizer_type") or "")
    return (name or "AdamW"), (args.place("optimizer_type") if name else "sd-scripts' default")


def optimizer_probe(ctx: Context, background: bool = False) -> dict[str, Any] | None:
    """One step of the bitsandbytes optimizer on a tiny tensor on the expected device, in its own process
    (a hung CUDA kernel must not take the shared probe with it)."""
    params = {"device": ctx.target.device, "optimizer": optimizer_name(ctx)[0]}
    step = program("optimizer")

    def ask() -> dict[str, Any]:
        return warm.cached("device:optimizer", ctx.target, step, params, fresh=ctx.fresh, note=ctx.note,
                           keep=lambda a: not a.get("error") and a.get("finite") is True,
                           compute=lambda: run_program(ctx.target.python_exe, step, params,
                                                       timeout=OPTIMIZER_TIMEOUT_S))
    if background:
        ctx.prefetch("probe:device:optimizer", ask)
        return None
    return ctx.memo("probe:device:optimizer", ask)


def features_prefetch(ctx: Context) -> None:
    """Start the optimizer step probe when the optimizer needs bitsandbytes, and the stack probe for auto."""
    if ctx.target.device == "auto":
        stackprobe.start(ctx)
    if needs_bitsandbytes(optimizer_name(ctx)[0]):
        optimizer_probe(ctx, background=True)


def optimizer_problem(ctx: Context, device: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """A bitsandbytes optimizer, tried for one step on the device: (problem, detail, edits)."""
    optimizer, where = optimizer_name(ctx)
    if not needs_bitsandbytes(optimizer):
        return None, None, {}
    try:
        step = optimizer_probe(ctx) or {}
    except ProbeError as exc:
        step = {"error": str(exc).splitlines()[0]}
    if not step.get("error") and step.get("finite") is not False:
        return None, (f"optimizer {optimizer}: one step on {step.get('device')} took {step.get('step_s')} s "
                      f"(bitsandbytes {step.get('bitsandbytes')})"), {}
    why = step.get("error") or "the step produced NaN or inf"
    version_note = f" (bitsandbytes {step['bitsandbytes']})" if step.get("bitsandbytes") else ""
    edits: dict[str, Any] = {"use_8bit_adam": False} if train_args(ctx).on("use_8bit_adam") else \
        {"optimizer_type": "AdamW"}
    return (f"optimizer {optimizer} ({where}) needs bitsandbytes, and one step of it on "
            f"{step.get('device') or device} fails{version_note}: {why}"), None, edits


def sdxl_vae_warning(ctx: Context) -> str | None:
    """SDXL's VAE overflows in fp16 unless --no_half_vae."""
    args = train_args(ctx)
    mp, mp_place = accelconfig.effective_mixed_precision(args)
    if Path(ctx.target.script).name.startswith("sdxl_") and mp == "fp16" and not args.on("no_half_vae"):
        return (f"SDXL with fp16 ({mp_place}) and no --no_half_vae: the SDXL VAE overflows in fp16 "
                "(\"NaN detected in latents\", black images)")
    return None


@check("device.features", "the training args ask nothing the device cannot do", tags=PROBED,
       prefetch=features_prefetch, timeout_s=max(stackprobe.TIMEOUT_S, OPTIMIZER_TIMEOUT_S) + 10,
       fixes="an 8-bit optimizer bitsandbytes cannot run here -> AdamW, xformers off CUDA -> sdpa, where the value "
             "is set (--yes); for arguments after -- it prints the corrected command")
def features(ctx: Context) -> Result:
    args = train_args(ctx)
    try:
        device = wanted(ctx, facts(ctx) if ctx.target.device == "auto" else None)
    except ProbeError as exc:
        return skipped(exc)
    assert device is not None
    problem, detail, edits = optimizer_problem(ctx, device)
    problems, details = [problem] if problem else [], [detail] if detail else []
    if args.on("xformers") and device != "cuda":
        problems.append(f"--xformers ({args.place('xformers')}) on {device}: xformers has kernels only for "
                        "CUDA; the run dies at the first attention call (\"No operator found for "
                        "memory_efficient_attention_forward\")")
        edits.update({"xformers": False, "sdpa": True})
    warning = sdxl_vae_warning(ctx)
    warnings = [warning] if warning else []
    if problems:
        hint = ("change: " + change_hint(ctx, edits) +
                ("; with bitsandbytes gone, AdamW uses about 3x the optimizer memory" if "optimizer_type" in
                 edits or "use_8bit_adam" in edits else ""))
        summary = problems[0] if len(problems) == 1 else f"{len(problems)} training args do not fit {device}"
        result = fixed_result(ctx, Status.FAIL, summary, hint, edits, "edit the training args: " + ", ".join(
            f"{k} = {toml_value(v)}" for k, v in edits.items()))
        result.details = (problems if len(problems) > 1 else []) + warnings + details
        return result
    if warnings:
        return Result.warn(warnings[0], details, hint=f"change: {change_hint(ctx, {'no_half_vae': True})}")
    return Result.ok(f"optimizer {optimizer_name(ctx)[0]}, attention and precision settings fit {device}", details)


# These modules register device.distributed, device.memory and device.load_ram after the checks above.
from lorasetup.checks.device import distributed as _distributed  # noqa: E402,F401
from lorasetup.checks.device import memory as _memory  # noqa: E402,F401
