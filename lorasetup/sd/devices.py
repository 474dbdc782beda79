"""What the stack probe saw of the device, as labels and facts shared by the device gate and `lorasetup env`."""

from __future__ import annotations

from typing import Any

from packaging.version import InvalidVersion, Version

GIB = 1024 ** 3


def torch_facts(found: dict[str, Any]) -> dict[str, Any]:
    return found.get("torch") or {}


def version(text: str | None) -> Version | None:
    try:
        return Version(str(text).split("+")[0]) if text else None
    except InvalidVersion:
        return None


def rosetta(found: dict[str, Any]) -> bool:
    """An x86_64 Python translated by Rosetta on an Apple Silicon Mac: torch there has no MPS."""
    py = found.get("python") or {}
    return py.get("sys_platform") == "darwin" and py.get("machine") == "x86_64" and (
        py.get("proc_translated") == "1" or py.get("arm64_hardware") == "1")


def smi_gpus(found: dict[str, Any]) -> list[dict[str, Any]]:
    return ((found.get("nvidia_smi") or {}).get("gpus")) or []


def available(found: dict[str, Any], device: str) -> bool:
    t = torch_facts(found)
    return device == "cpu" or bool(t.get(f"{device}_available"))


def best_available(found: dict[str, Any]) -> str:
    """The device accelerate picks when nothing forces the CPU: MPS, then CUDA, then XPU (state.py)."""
    return next((d for d in ("mps", "cuda", "xpu") if available(found, d)), "cpu")


def machine_offers(found: dict[str, Any]) -> str:
    """The best device this machine has, even when torch cannot use it (what `device = "auto"` asks for)."""
    best = best_available(found)
    if best != "cpu":
        return best
    py = found.get("python") or {}
    if smi_gpus(found) or torch_facts(found).get("cuda_device_count_machine"):
        return "cuda"
    if py.get("sys_platform") == "darwin" and (py.get("machine") == "arm64" or rosetta(found)):
        return "mps"
    return "cpu"


def build_label(t: dict[str, Any]) -> str:
    if t.get("hip"):
        return f"ROCm {t['hip']} build"
    if t.get("cuda"):
        return f"CUDA {t['cuda']} build"
    if t.get("mps_built"):
        return "build with MPS"
    if t.get("xpu_available"):
        return "XPU build"
    return "CPU-only build"


def device_lines(found: dict[str, Any]) -> list[str]:
    """What the probe saw, one fact a line, for details and `lorasetup env`."""
    t, py = torch_facts(found), found.get("python") or {}
    lines = [f"python {py.get('version')} {py.get('machine')} at {py.get('executable')}"]
    if py.get("sys_platform") == "darwin":
        lines.append(f"macOS {py.get('mac_ver')}; Rosetta: {'yes' if rosetta(found) else 'no'}")
    if not t:
        return lines + [f"torch: cannot be imported: {found.get('torch_error')}"]
    lines.append(f"torch {t.get('version')} ({build_label(t)})"
                 + (f", torchvision {t['torchvision']}" if t.get("torchvision") else ""))
    count = t.get("cuda_device_count") or 0
    lines.append(f"cuda available: {yes(t.get('cuda_available'))}, {count} device(s)")
    for i, d in enumerate(t.get("cuda_devices") or []):
        cap = d.get("capability") or [0, 0]
        lines.append(f"  cuda:{i} {d.get('name')}, sm_{cap[0]}{cap[1]}, "
                     f"{(d.get('total_memory') or 0) / GIB:.1f} GiB")
    if t.get("cuda_arch_list"):
        lines.append(f"  torch built for: {' '.join(t['cuda_arch_list'])}")
    mem = t.get("mps_recommended_max_memory")
    lines.append(f"mps built: {yes(t.get('mps_built'))}, available: {yes(t.get('mps_available'))}"
                 + (f", recommended max memory {mem / GIB:.1f} GiB" if mem else ""))
    if t.get("xpu_available"):
        lines.append(f"xpu available: {', '.join(t.get('xpu_devices') or []) or 'yes'}")
    smi = found.get("nvidia_smi")
    if smi:
        gpus = [f"{g['name']} ({g['memory_mib']} MiB, sm {g['capability']}, driver {g['driver']})"
                for g in smi.get("gpus") or []]
        lines.append(f"nvidia-smi: {'; '.join(gpus) or smi.get('error') or 'no GPU listed'}")
    lines += [f"torch warned: {w.splitlines()[0]}" for w in t.get("warnings") or []]
    return lines


def yes(value: Any) -> str:
    return "yes" if value else "no"
