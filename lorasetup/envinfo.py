"""`lorasetup env`: a paste-ready description of this machine and setup, for a bug report.

Unlike `accelerate env` it shows MPS (built, available, memory), Rosetta, the CUDA arch list against the GPU,
where the accelerate config comes from and what Accelerator() reports under it, and the sd-scripts commit.
Every fact it cannot collect says "could not collect" and why, instead of failing.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

from lorasetup import __version__
from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import CheckFailed
from lorasetup.sd import accelconfig, stackprobe
from lorasetup.sd.devices import GIB, gpu_line, rosetta, yes
from lorasetup.sd.git import git
from lorasetup.sd.stackfacts import StackFacts

UNKNOWN = "could not collect"


def git_state(path: Path | None) -> str:
    """`<path> @ <commit> (<describe>)`, or why not."""
    if path is None:
        return f"{UNKNOWN} (no kohya_ss or sd-scripts checkout found; pass --kohya-root)"
    if not (path / ".git").exists():
        return f"{path} ({UNKNOWN} the commit: not a git checkout, e.g. a ZIP download)"
    try:
        head = git(path, "rev-parse", "HEAD")
        described = git(path, "describe", "--tags", "--always", "--dirty")
    except CheckFailed as exc:  # git is not installed
        return f"{path} ({UNKNOWN} the commit: {exc.summary})"
    except subprocess.SubprocessError as exc:
        return f"{path} ({UNKNOWN} the commit: {exc})"
    if head.returncode or described.returncode:
        return f"{path} ({UNKNOWN} the commit: {(head.stderr or described.stderr).strip()})"
    return f"{path} @ {head.stdout.strip()} ({described.stdout.strip()})"


def _torch_lines(found: StackFacts) -> list[tuple[str, str]]:
    t = found.torch
    if t is None:
        return [("torch", f"{UNKNOWN}: cannot be imported: {found.torch_error}")]
    rows = [("torch", f"{t.version} ({t.build_label()})"), ("torchvision", str(t.torchvision or "not installed"))]
    cuda = f"available {yes(t.cuda_available)}, {t.cuda_device_count or 0} device(s)"
    if t.cuda_arch_list:
        cuda += f"; built for {' '.join(t.cuda_arch_list)}"
    rows.append(("CUDA", cuda))
    rows += [(f"  cuda:{i}", f"{gpu_line(d)}, bf16 {yes(t.cuda_bf16)}") for i, d in enumerate(t.cuda_devices)]
    mps = f"built {yes(t.mps_built)}, available {yes(t.mps_available)}"
    if t.mps_recommended_max_memory:
        mps += f", recommended max memory {t.mps_recommended_max_memory / GIB:.1f} GiB"
    if t.mps_macos14 is not None:
        mps += f", macOS 14 or newer {yes(t.mps_macos14)}"
    rows.append(("MPS", mps))
    if t.xpu_available:
        rows.append(("XPU", ", ".join(t.xpu_devices) or "available"))
    rows += [("torch warned", w.splitlines()[0]) for w in t.warnings]
    return rows


def _accelerate_lines(ctx: Context, found: StackFacts) -> list[tuple[str, str]]:
    location = accelconfig.find_config(ctx.target)
    state = "exists" if location.exists else "does not exist"
    rows = [("accelerate config", f"{location.path} ({location.origin}, {state})"),
            ("launch flags", shlex.join(ctx.target.launch_args) or "none")]
    acc = found.accelerate
    if acc is None:
        return [("accelerate", f"{UNKNOWN}: cannot be imported: {found.accelerate_error}")] + rows
    rows.insert(0, ("accelerate", str(acc.version)))
    if acc.config:
        rows.append(("  values", ", ".join(f"{k}: {v}" for k, v in sorted(acc.config.items())
                                           if not isinstance(v, (dict, list)))))
    if acc.config_error or acc.launch_error:
        rows.append(("  launch", f"fails: {acc.config_error or acc.launch_error}"))
    report = acc.accelerator
    if report:
        rows.append(("Accelerator()", (f"device {report.device}, mixed_precision {report.mixed_precision}, "
                                      f"distributed {report.distributed_type}, {report.num_processes} "
                                      "process(es)")))
    else:
        rows.append(("Accelerator()", f"{UNKNOWN}: {acc.accelerator_error_no or acc.accelerator_error}"))
    return rows


def _imports_line(found: StackFacts) -> tuple[str, str]:
    if found.targets_error:
        return "sd-scripts imports", f"{UNKNOWN}: {found.targets_error}"
    results = {**found.imports, **found.from_imports}
    if not results:
        return "sd-scripts imports", f"{UNKNOWN}: no sd-scripts entry script to read"
    failing = sorted(k for k, v in results.items() if v)
    if not failing:
        return "sd-scripts imports", f"all {len(results)} resolve"
    return "sd-scripts imports", f"{len(failing)} of {len(results)} fail: " + "; ".join(
        f"{k}: {results[k]}" for k in failing[:5]) + (" ..." if len(failing) > 5 else "")


def _stack_lines(found: StackFacts) -> list[tuple[str, str]]:
    """The training interpreter, torch and nvidia-smi, as the stack probe saw them."""
    py = found.python
    line = f"{py.version} {py.machine} at {py.executable}"
    if py.sys_platform == "darwin":
        line += f"; Rosetta {yes(rosetta(found))}"
    smi = found.nvidia_smi
    smi_text = "not on PATH" if smi is None else (
        "; ".join(f"{g.name} ({g.memory_mib} MiB, driver {g.driver}, sm {g.capability})" for g in smi.gpus)
        or f"{UNKNOWN}: {smi.error or 'no GPU listed'}")
    return [("training Python", line), *_torch_lines(found), ("nvidia-smi", smi_text)]


def render_env(ctx: Context) -> str:
    """The whole block, as aligned `name: value` lines."""
    target = ctx.target
    rows: list[tuple[str, str]] = [
        ("lorasetup", f"{__version__} on Python {platform.python_version()} ({sys.executable})"),
        ("OS", f"{platform.platform()} ({platform.machine()})"
               + (f", macOS {platform.mac_ver()[0]}" if sys.platform == "darwin" else "")),
    ]
    try:
        found: StackFacts | None = stackprobe.facts(ctx)
    except ProbeError as exc:
        found = None
        rows.append(("training Python", f"{target.python_exe} ({UNKNOWN}: {str(exc).splitlines()[0]})"))
    if found is not None:
        rows += _stack_lines(found) + _accelerate_lines(ctx, found)
    else:
        rows.append(("torch, accelerate", UNKNOWN))
    rows.append(("expected device", target.device))
    if target.layout == "kohya_ss":
        rows.append(("kohya_ss", git_state(target.kohya_root)))
    rows.append(("sd-scripts", git_state(target.sd_scripts)))
    rows.append(("entry script", target.script))
    if found is not None:
        rows.append(_imports_line(found))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows)
