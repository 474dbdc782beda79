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
from typing import Any

from lorasetup import __version__
from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import CheckFailed
from lorasetup.sd import accelconfig, stackprobe
from lorasetup.sd.devices import GIB, build_label, rosetta, yes
from lorasetup.sd.git import git

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


def _torch_lines(found: dict[str, Any]) -> list[tuple[str, str]]:
    t = found.get("torch")
    if not t:
        return [("torch", f"{UNKNOWN}: cannot be imported: {found.get('torch_error')}")]
    rows = [("torch", f"{t.get('version')} ({build_label(t)})"),
            ("torchvision", str(t.get("torchvision") or "not installed"))]
    cuda = f"available {yes(t.get('cuda_available'))}, {t.get('cuda_device_count') or 0} device(s)"
    if t.get("cuda_arch_list"):
        cuda += f"; built for {' '.join(t['cuda_arch_list'])}"
    rows.append(("CUDA", cuda))
    for i, d in enumerate(t.get("cuda_devices") or []):
        cap = d.get("capability") or [0, 0]
        memory = (d.get("total_memory") or 0) / GIB
        rows.append((f"  cuda:{i}", (f"{d.get('name')}, sm_{cap[0]}{cap[1]}, {memory:.1f} GiB, "
                                   f"bf16 {yes(t.get('cuda_bf16'))}")))
    mps = f"built {yes(t.get('mps_built'))}, available {yes(t.get('mps_available'))}"
    if t.get("mps_recommended_max_memory"):
        mps += f", recommended max memory {t['mps_recommended_max_memory'] / GIB:.1f} GiB"
    if t.get("mps_macos14") is not None:
        mps += f", macOS 14 or newer {yes(t['mps_macos14'])}"
    rows.append(("MPS", mps))
    if t.get("xpu_available"):
        rows.append(("XPU", ", ".join(t.get("xpu_devices") or []) or "available"))
    rows += [("torch warned", w.splitlines()[0]) for w in t.get("warnings") or []]
    return rows


def _accelerate_lines(ctx: Context, found: dict[str, Any]) -> list[tuple[str, str]]:
    location = accelconfig.find_config(ctx.target)
    state = "exists" if location.exists else "does not exist"
    rows = [("accelerate config", f"{location.path} ({location.origin}, {state})"),
            ("launch flags", shlex.join(ctx.target.launch_args) or "none")]
    acc = found.get("accelerate")
    if not acc:
        return [("accelerate", f"{UNKNOWN}: cannot be imported: {found.get('accelerate_error')}")] + rows
    rows.insert(0, ("accelerate", str(acc.get("version"))))
    if acc.get("config"):
        rows.append(("  values", ", ".join(f"{k}: {v}" for k, v in sorted(acc["config"].items())
                                           if not isinstance(v, (dict, list)))))
    if acc.get("config_error") or acc.get("launch_error"):
        rows.append(("  launch", f"fails: {acc.get('config_error') or acc.get('launch_error')}"))
    report = acc.get("accelerator")
    if report:
        rows.append(("Accelerator()", (f"device {report.get('device')}, mixed_precision "
                                      f"{report.get('mixed_precision')}, distributed "
                                      f"{report.get('distributed_type')}, {report.get('num_processes')} "
                                      "process(es)")))
    else:
        why = acc.get("accelerator_error_no") or acc.get("accelerator_error")
        rows.append(("Accelerator()", f"{UNKNOWN}: {why}"))
    return rows


def _imports_line(found: dict[str, Any]) -> tuple[str, str]:
    if found.get("targets_error"):
        return "sd-scripts imports", f"{UNKNOWN}: {found['targets_error']}"
    results = {**found.get("imports", {}), **found.get("from_imports", {})}
    if not results:
        return "sd-scripts imports", f"{UNKNOWN}: no sd-scripts entry script to read"
    failing = sorted(k for k, v in results.items() if v)
    if not failing:
        return "sd-scripts imports", f"all {len(results)} resolve"
    return "sd-scripts imports", f"{len(failing)} of {len(results)} fail: " + "; ".join(
        f"{k}: {results[k]}" for k in failing[:5]) + (" ..." if len(failing) > 5 else "")


def render_env(ctx: Context) -> str:
    """The whole block, as aligned `name: value` lines."""
    target = ctx.target
    rows: list[tuple[str, str]] = [
        ("lorasetup", f"{__version__} on Python {platform.python_version()} ({sys.executable})"),
        ("OS", f"{platform.platform()} ({platform.machine()})"
               + (f", macOS {platform.mac_ver()[0]}" if sys.platform == "darwin" else "")),
    ]
    try:
        found = stackprobe.result(ctx)
    except ProbeError as exc:
        found = None
        rows.append(("training Python", f"{target.python_exe} ({UNKNOWN}: {str(exc).splitlines()[0]})"))
    if found is not None:
        py = found.get("python") or {}
        line = f"{py.get('version')} {py.get('machine')} at {py.get('executable')}"
        if py.get("sys_platform") == "darwin":
            line += f"; Rosetta {yes(rosetta(found))}"
        rows.append(("training Python", line))
        rows += _torch_lines(found)
        smi = found.get("nvidia_smi")
        rows.append(("nvidia-smi", "not on PATH" if smi is None else "; ".join(
            f"{g['name']} ({g['memory_mib']} MiB, driver {g['driver']}, sm {g['capability']})"
            for g in smi.get("gpus") or []) or f"{UNKNOWN}: {smi.get('error') or 'no GPU listed'}"))
        rows += _accelerate_lines(ctx, found)
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
