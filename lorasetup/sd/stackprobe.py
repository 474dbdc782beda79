"""The one training-interpreter process per run that imports the training stack.

It imports torch and accelerate once, collects the device facts, builds an `Accelerator` the way sd-scripts
does under the environment `accelerate launch` would set from the accelerate config, then imports the deps
gate's deep-import targets (lorasetup.sd.imports.deep_targets) one by one. `start(ctx)` launches it in the
background while the static checks run; `result(ctx)` waits for it.

The answer (`result(ctx)`), every key always present:
- "imports": module -> None | the real error line; "from_imports": "module:name" -> None | error line.
- "python": version, executable, machine, platform, sys_platform, mac_ver, proc_translated (macOS: "1" under
  Rosetta), arm64_hardware (macOS: "1" on Apple Silicon).
- "nvidia_smi": None when absent, else {"path", "gpus": [{"name", "memory_mib", "driver", "capability"}],
  "error"}.
- "torch": None when torch cannot be imported ("torch_error" says why), else version, cuda, hip, torchvision
  (its installed version), cuda_available, cuda_device_count, cuda_device_count_machine (before launch's
  CUDA_VISIBLE_DEVICES), cuda_devices [{"name", "capability", "total_memory"}], cuda_arch_list, cuda_bf16,
  mps_built, mps_available, mps_macos14, mps_recommended_max_memory, xpu_available, xpu_devices, device_ops
  (device -> None | the error of a tiny matmul there), warnings (what torch warned meanwhile), errors.
- "accelerate": None when it cannot be imported ("accelerate_error"), else version, default_config_file,
  config (values as accelerate reads them) or config_error, launch (what launch decided: launcher,
  num_processes, num_machines, gpu_ids, mixed_precision, use_cpu, env) or launch_error, accelerator (device,
  mixed_precision, distributed_type, num_processes) built with sd-scripts' own mixed precision, and
  accelerator_error when that precision made Accelerator() fail (then `accelerator` is built with "no").
- "timings": seconds per stage; "stage": the stage running when the interpreter died (None when it finished);
  "crash": None, or what died where when the interpreter was killed by a compiled extension (a segfault or
  abort leaves no Python error): earlier stages' facts are kept; an import that killed it gets that message,
  later ones "not tried".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.probe import MARKER, ProbeError, run_probe
from lorasetup.sd import accelconfig
from lorasetup.sd.imports import deep_targets
from lorasetup.sd.trainargs import train_args

KEY = "stackprobe"
TIMEOUT_S = 240.0  # a cold first import of torch on a laptop disk can take a minute

SNIPPET = r'''
import importlib, json, os, platform, shutil, subprocess, sys, time, traceback, warnings
P = json.loads(PARAMS)
R = RESULT
R.update(imports={}, from_imports={}, timings={}, stage=None, crashed_in=None, done=False, torch=None,
         accelerate=None, nvidia_smi=None, torch_error=None, accelerate_error=None)
T0 = time.perf_counter()


def errline(exc):
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def checkpoint():
    """Write what is known so far: if a later import kills the interpreter, this survives."""
    _out.write("\n" + P["marker"] + _json.dumps(R, default=str) + "\n")
    _out.flush()


def tick(name, start):
    R["timings"][name] = round(time.perf_counter() - start, 3)


def stage(name):
    """Say what runs next, durably: a crash in compiled code leaves this as the last word."""
    R["stage"] = name
    checkpoint()


py = R["python"] = {"version": platform.python_version(), "executable": sys.executable,
                    "machine": platform.machine(), "platform": platform.platform(),
                    "sys_platform": sys.platform}
if sys.platform == "darwin":
    py["mac_ver"] = platform.mac_ver()[0]
    for key, name in (("proc_translated", "sysctl.proc_translated"), ("arm64_hardware", "hw.optional.arm64")):
        try:
            py[key] = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                     timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            py[key] = None
smi_path = shutil.which("nvidia-smi")
smi = None
if smi_path:
    try:
        smi = subprocess.Popen([smi_path, "--query-gpu=name,memory.total,driver_version,compute_cap",
                                "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        R["nvidia_smi"] = {"path": smi_path, "gpus": [], "error": errline(exc)}

stage("import torch")
start = time.perf_counter()
try:
    import torch
except (Exception, SystemExit) as exc:
    R["torch_error"] = errline(exc)
    torch = None
tick("torch", start)
stage("import accelerate")
start = time.perf_counter()
try:
    import accelerate
except (Exception, SystemExit) as exc:
    R["accelerate_error"] = errline(exc)
    accelerate = None
tick("accelerate", start)

cuda_machine = None
if torch is not None:
    try:
        cuda_machine = torch.cuda.device_count()
    except Exception:
        pass

if accelerate is not None:
    acc = R["accelerate"] = {"version": accelerate.__version__, "config": None, "config_error": None,
                             "launch": None, "launch_error": None, "accelerator": None,
                             "accelerator_error": None}
    stage("accelerate launch")
    start = time.perf_counter()
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file
        acc["default_config_file"] = os.path.abspath(default_config_file)
        if P["config_file"] and (P["config_explicit"] or os.path.isfile(P["config_file"])):
            acc["config"] = load_config_from_file(P["config_file"]).to_dict()
    except (Exception, SystemExit) as exc:
        acc["config_error"] = errline(exc)
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils import launch as launch_utils
        argv = (["--config_file", P["config_file"]] if P["config_file"] and (
            P["config_explicit"] or os.path.isfile(P["config_file"])) else []) + [P["script"]]
        args = launch_command_parser().parse_args(argv)
        before = dict(os.environ)
        validated = _validate_launch_command(args)
        args = validated[0] if isinstance(validated, tuple) else args
        kinds = ("use_deepspeed", "use_fsdp", "use_tp", "use_megatron_lm", "multi_gpu", "tpu")
        distributed = [name for name in kinds if getattr(args, name, False) and not args.cpu]
        if not distributed:
            launcher, env = "simple", launch_utils.prepare_simple_launcher_cmd_env(args)[1]
        elif distributed[0] in ("use_fsdp", "use_tp", "use_megatron_lm", "multi_gpu"):
            launcher, env = "multi_gpu", launch_utils.prepare_multi_gpu_env(args)
        else:
            launcher, env = distributed[0], dict(before)
        changed = {k: v for k, v in env.items() if before.get(k) != v}
        acc["launch"] = {"launcher": launcher, "num_processes": args.num_processes,
                         "num_machines": args.num_machines, "gpu_ids": args.gpu_ids,
                         "mixed_precision": args.mixed_precision,
                         "use_cpu": bool(args.cpu or getattr(args, "use_cpu", False)), "env": changed}
        os.environ.update(changed)
    except (Exception, SystemExit) as exc:
        acc["launch_error"] = errline(exc)
    tick("launch", start)

if torch is not None:
    stage("torch devices")
    start = time.perf_counter()
    t = R["torch"] = {"version": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
                      "hip": getattr(torch.version, "hip", None), "cuda_device_count_machine": cuda_machine,
                      "device_ops": {}, "warnings": []}
    try:
        from importlib.metadata import version as dist_version
        t["torchvision"] = dist_version("torchvision")
    except Exception:
        t["torchvision"] = None
    cuda, mps = torch.cuda, torch.backends.mps
    xpu = getattr(torch, "xpu", None)

    def props():
        return [{"name": p.name, "capability": [p.major, p.minor], "total_memory": p.total_memory}
                for p in map(cuda.get_device_properties, range(cuda.device_count()))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, get in (
                ("cuda_available", cuda.is_available),
                ("cuda_device_count", cuda.device_count),
                ("cuda_arch_list", lambda: cuda.get_arch_list() if t["cuda"] else []),
                ("cuda_devices", lambda: props() if cuda.is_available() else []),
                ("cuda_bf16", lambda: cuda.is_bf16_supported() if cuda.is_available() else None),
                ("mps_built", mps.is_built),
                ("mps_available", mps.is_available),
                ("mps_macos14", lambda: mps.is_macos_or_newer(14, 0)
                 if mps.is_available() and hasattr(mps, "is_macos_or_newer") else None),
                ("mps_recommended_max_memory", lambda: torch.mps.recommended_max_memory()
                 if mps.is_available() and hasattr(torch.mps, "recommended_max_memory") else None),
                ("xpu_available", lambda: xpu is not None and xpu.is_available()),
                ("xpu_devices", lambda: [xpu.get_device_name(i) for i in range(xpu.device_count())]
                 if xpu is not None and xpu.is_available() else [])):
            try:
                t[name] = get()
            except Exception as exc:
                t[name] = None
                t.setdefault("errors", {})[name] = errline(exc)
        for dev in ("cuda", "mps", "xpu"):
            if t.get(dev + "_available"):
                try:
                    x = torch.ones(8, 8, device=dev)
                    float((x @ x).sum().item())
                    t["device_ops"][dev] = None
                except Exception as exc:
                    t["device_ops"][dev] = errline(exc)
    t["warnings"] = [str(w.message).strip() for w in caught]
    tick("devices", start)

if R["accelerate"] is not None:
    stage("Accelerator()")
    start = time.perf_counter()

    def build(precision):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(True)
        a = Accelerator(mixed_precision=precision, dynamo_backend=P["dynamo_backend"])
        kind = getattr(a.distributed_type, "value", a.distributed_type)
        return {"device": str(a.device), "mixed_precision": a.mixed_precision, "distributed_type": str(kind),
                "num_processes": a.num_processes}
    try:
        R["accelerate"]["accelerator"] = build(P["mixed_precision"])
    except (Exception, SystemExit) as exc:
        R["accelerate"]["accelerator_error"] = errline(exc)
        if P["mixed_precision"] != "no":
            try:
                R["accelerate"]["accelerator"] = build("no")
            except (Exception, SystemExit) as exc2:
                R["accelerate"]["accelerator_error_no"] = errline(exc2)
    tick("accelerator", start)

if P["sd_scripts"]:
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # `python -c` puts the working directory first; a training run, the script's folder
    sys.path.insert(0, P["sd_scripts"])
R["stage"] = "imports"
start = time.perf_counter()
for name in P["modules"]:
    R["crashed_in"] = name
    checkpoint()
    try:
        importlib.import_module(name)
        R["imports"][name] = None
    except (Exception, SystemExit) as exc:
        R["imports"][name] = errline(exc)
for module, name in P["from_imports"]:
    key = module + ":" + name
    R["crashed_in"] = key
    checkpoint()
    try:
        exec("from " + module + " import " + name, {})
        R["from_imports"][key] = None
    except (Exception, SystemExit) as exc:
        R["from_imports"][key] = errline(exc)
R["crashed_in"] = None
tick("imports", start)
stage("nvidia-smi")

if smi is not None:
    try:
        out, err = smi.communicate(timeout=15)
        gpus = []
        for row in out.strip().splitlines():
            cells = [c.strip() for c in row.split(",")]
            if len(cells) == 4:
                gpus.append({"name": cells[0], "memory_mib": cells[1], "driver": cells[2],
                             "capability": cells[3]})
        R["nvidia_smi"] = {"path": smi_path, "gpus": gpus,
                           "error": None if smi.returncode == 0 else (err.strip() or out.strip())[-300:]}
    except subprocess.TimeoutExpired:
        smi.kill()
        R["nvidia_smi"] = {"path": smi_path, "gpus": [], "error": "nvidia-smi did not answer within 15 s"}
R["timings"]["total"] = round(time.perf_counter() - T0, 3)
R["done"], R["stage"] = True, None
checkpoint()
sys.stderr.flush()
os._exit(0)  # the answer is written; tearing down torch, transformers and diffusers takes seconds
'''


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
    """What the snippet needs: the config file, sd-scripts' own precision, the deep-import targets."""
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
            "sd_scripts": str(target.sd_scripts) if target.sd_scripts else None, "marker": MARKER}


def _run(ctx: Context) -> dict[str, Any]:
    p = params(ctx)
    code = f"PARAMS = {json.dumps(json.dumps(p))}\n" + SNIPPET
    raw = run_probe(ctx.target.python_exe, code, timeout=TIMEOUT_S)
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


def result(ctx: Context) -> dict[str, Any]:
    """The probe's answer (waits for a started probe, or runs it); raises ProbeError if it could not run."""
    return ctx.memo(KEY, lambda: _run(ctx))
