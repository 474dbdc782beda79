"""The stack probe: the one training-interpreter process per run that imports the training stack.

Run by lorasetup.sd.stackprobe (which documents the answer and parses it into StackFacts). In order: the Python
facts; nvidia-smi started in the background; torch and accelerate imported once; what `accelerate launch` would
decide from the accelerate config, and the environment it would set (applied here, as launch does); torch's
devices under that environment; an `Accelerator()` built as sd-scripts builds it; then the deps gate's
deep-import targets, one by one. Before each stage the answer so far is checkpointed, so when compiled code
kills the interpreter (a segfault leaves no Python error) the last checkpoint names the stage that died.

Standard library only at module level; syntax old interpreters parse.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

SCHEMA_VERSION = 1  # lorasetup.sd.stackfacts parses this version of the answer
SMI_QUERY = ["--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"]
DISTRIBUTED_KINDS = ("use_deepspeed", "use_fsdp", "use_tp", "use_megatron_lm", "multi_gpu", "tpu")
MULTI_GPU_KINDS = ("use_fsdp", "use_tp", "use_megatron_lm", "multi_gpu")


def errline(exc: BaseException) -> str:
    """The last line of an exception as Python prints it."""
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


class Run:
    """The answer so far and how to save it."""

    def __init__(self, checkpoint: Callable[[dict[str, Any]], None]) -> None:
        self.answer: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "imports": {}, "from_imports": {}, "timings": {}, "stage": None,
            "crashed_in": None, "done": False, "torch": None, "accelerate": None, "nvidia_smi": None,
            "torch_error": None, "accelerate_error": None}
        self._checkpoint = checkpoint
        self.start = self.t0 = time.perf_counter()

    def checkpoint(self) -> None:
        """Write what is known so far: if a later import kills the interpreter, this survives."""
        self._checkpoint(self.answer)

    def stage(self, name: str) -> None:
        """Say what runs next, durably: a crash in compiled code leaves this as the last word."""
        self.answer["stage"] = name
        self.checkpoint()
        self.start = time.perf_counter()

    def tick(self, name: str) -> None:
        self.answer["timings"][name] = round(time.perf_counter() - self.start, 3)


def python_facts() -> dict[str, Any]:
    py: dict[str, Any] = {"version": platform.python_version(), "executable": sys.executable,
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
    return py


def start_nvidia_smi(run: Run, path: str | None) -> subprocess.Popen | None:
    """nvidia-smi, started now and read at the end (it can take seconds while torch imports)."""
    if not path:
        return None
    try:
        return subprocess.Popen([path, *SMI_QUERY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        run.answer["nvidia_smi"] = {"path": path, "gpus": [], "error": errline(exc)}
        return None


def read_nvidia_smi(smi: subprocess.Popen, path: str) -> dict[str, Any]:
    try:
        out, err = smi.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        smi.kill()
        return {"path": path, "gpus": [], "error": "nvidia-smi did not answer within 15 s"}
    gpus = []
    for row in out.strip().splitlines():
        cells = [c.strip() for c in row.split(",")]
        if len(cells) == 4:
            gpus.append({"name": cells[0], "memory_mib": cells[1], "driver": cells[2], "capability": cells[3]})
    return {"path": path, "gpus": gpus,
            "error": None if smi.returncode == 0 else (err.strip() or out.strip())[-300:]}


def import_stack(run: Run, name: str) -> Any:
    """Import torch or accelerate; None (and `<name>_error`) when that fails."""
    run.stage(f"import {name}")
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        run.answer[f"{name}_error"] = errline(exc)
        module = None
    run.tick(name)
    return module


def config_argv(params: dict[str, Any]) -> list[str]:
    """`--config_file X` as accelerate launch gets it: only an explicit or existing file."""
    config = params["config_file"]
    return ["--config_file", config] if config and (params["config_explicit"] or os.path.isfile(config)) else []


def read_config(params: dict[str, Any], acc: dict[str, Any]) -> None:
    """The accelerate config's values as accelerate reads them, and its default location."""
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file
        acc["default_config_file"] = os.path.abspath(default_config_file)
        if config_argv(params):
            acc["config"] = load_config_from_file(params["config_file"]).to_dict()
    except (Exception, SystemExit) as exc:
        acc["config_error"] = errline(exc)


def launch(params: dict[str, Any], acc: dict[str, Any]) -> None:
    """What `accelerate launch <script>` decides, with accelerate's own code; its environment is applied here."""
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils import launch as launch_utils
        args = launch_command_parser().parse_args(config_argv(params) + [params["script"]])
        before = dict(os.environ)
        validated = _validate_launch_command(args)
        args = validated[0] if isinstance(validated, tuple) else args
        distributed = [name for name in DISTRIBUTED_KINDS if getattr(args, name, False) and not args.cpu]
        if not distributed:
            launcher, env = "simple", launch_utils.prepare_simple_launcher_cmd_env(args)[1]
        elif distributed[0] in MULTI_GPU_KINDS:
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


def device_queries(torch: Any, cuda_build: bool) -> list[tuple[str, Callable[[], Any]]]:
    """Each device fact torch reports, and how to ask for it."""
    cuda, mps = torch.cuda, torch.backends.mps
    xpu = getattr(torch, "xpu", None)

    def props() -> list[dict[str, Any]]:
        return [{"name": p.name, "capability": [p.major, p.minor], "total_memory": p.total_memory}
                for p in map(cuda.get_device_properties, range(cuda.device_count()))]
    return [
        ("cuda_available", cuda.is_available),
        ("cuda_device_count", cuda.device_count),
        ("cuda_arch_list", lambda: cuda.get_arch_list() if cuda_build else []),
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
         if xpu is not None and xpu.is_available() else [])]


def torch_devices(torch: Any, cuda_machine: int | None) -> dict[str, Any]:
    """torch's build, its devices, and a tiny matmul on each available accelerator."""
    t: dict[str, Any] = {"version": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
                         "hip": getattr(torch.version, "hip", None), "cuda_device_count_machine": cuda_machine,
                         "device_ops": {}, "warnings": []}
    try:
        from importlib.metadata import version as dist_version
        t["torchvision"] = dist_version("torchvision")
    except Exception:
        t["torchvision"] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, get in device_queries(torch, bool(t["cuda"])):
            try:
                t[name] = get()
            except Exception as exc:
                t[name] = None
                t.setdefault("errors", {})[name] = errline(exc)
        for dev in ("cuda", "mps", "xpu"):
            if t.get(dev + "_available"):
                t["device_ops"][dev] = matmul_error(torch, dev)
    t["warnings"] = [str(w.message).strip() for w in caught]
    return t


def matmul_error(torch: Any, dev: str) -> str | None:
    try:
        x = torch.ones(8, 8, device=dev)
        float((x @ x).sum().item())
        return None
    except Exception as exc:
        return errline(exc)


def build_accelerator(precision: str, dynamo_backend: str) -> dict[str, Any]:
    """Accelerator() as sd-scripts builds it, and what it reports."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    a = Accelerator(mixed_precision=precision, dynamo_backend=dynamo_backend)
    kind = getattr(a.distributed_type, "value", a.distributed_type)
    return {"device": str(a.device), "mixed_precision": a.mixed_precision, "distributed_type": str(kind),
            "num_processes": a.num_processes}


def accelerator(params: dict[str, Any], acc: dict[str, Any]) -> None:
    """Build it with sd-scripts' precision; when that fails, with "no", to learn the device anyway."""
    try:
        acc["accelerator"] = build_accelerator(params["mixed_precision"], params["dynamo_backend"])
    except (Exception, SystemExit) as exc:
        acc["accelerator_error"] = errline(exc)
        if params["mixed_precision"] != "no":
            try:
                acc["accelerator"] = build_accelerator("no", params["dynamo_backend"])
            except (Exception, SystemExit) as exc2:
                acc["accelerator_error_no"] = errline(exc2)


def deep_imports(params: dict[str, Any], run: Run) -> None:
    """Each module and `from X import Y` of the run, imported for real; `crashed_in` names the one running."""
    if params["sd_scripts"]:
        sys.path.insert(0, params["sd_scripts"])  # a training run has the script's folder first
    answer = run.answer
    answer["stage"] = "imports"
    run.start = time.perf_counter()
    for name in params["modules"]:
        answer["crashed_in"] = name
        run.checkpoint()
        try:
            importlib.import_module(name)
            answer["imports"][name] = None
        except (Exception, SystemExit) as exc:
            answer["imports"][name] = errline(exc)
    for module, name in params["from_imports"]:
        key = module + ":" + name
        answer["crashed_in"] = key
        run.checkpoint()
        try:
            exec("from " + module + " import " + name, {})
            answer["from_imports"][key] = None
        except (Exception, SystemExit) as exc:
            answer["from_imports"][key] = errline(exc)
    answer["crashed_in"] = None
    run.tick("imports")


def accelerate_facts(params: dict[str, Any], run: Run, accelerate: Any) -> dict[str, Any]:
    acc: dict[str, Any] = {"version": accelerate.__version__, "config": None, "config_error": None,
                           "launch": None, "launch_error": None, "accelerator": None, "accelerator_error": None}
    run.answer["accelerate"] = acc
    run.stage("accelerate launch")
    read_config(params, acc)
    launch(params, acc)
    run.tick("launch")
    return acc


def main(params: dict[str, Any], checkpoint: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    run = Run(checkpoint)
    answer = run.answer
    answer["python"] = python_facts()
    smi_path = shutil.which("nvidia-smi")
    smi = start_nvidia_smi(run, smi_path)
    torch = import_stack(run, "torch")
    accelerate = import_stack(run, "accelerate")
    cuda_machine = None
    if torch is not None:
        try:
            cuda_machine = torch.cuda.device_count()  # before launch's CUDA_VISIBLE_DEVICES
        except Exception:
            pass
    acc = accelerate_facts(params, run, accelerate) if accelerate is not None else None
    if torch is not None:
        run.stage("torch devices")
        answer["torch"] = torch_devices(torch, cuda_machine)
        run.tick("devices")
    if acc is not None:
        run.stage("Accelerator()")
        accelerator(params, acc)
        run.tick("accelerator")
    deep_imports(params, run)
    run.stage("nvidia-smi")
    if smi is not None and smi_path:
        answer["nvidia_smi"] = read_nvidia_smi(smi, smi_path)
    answer["timings"]["total"] = round(time.perf_counter() - run.t0, 3)
    answer["done"], answer["stage"] = True, None
    return answer
