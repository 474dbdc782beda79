"""What the stack probe saw of the device, as labels and facts shared by the device gate and `lorasetup env`."""

from __future__ import annotations

from typing import Any

from packaging.version import InvalidVersion, Version

from lorasetup.sd.stackfacts import CudaDevice, SmiGpu, StackFacts, TorchFacts

GIB = 1024 ** 3
NO_TORCH = TorchFacts()  # what is known of a torch that answered nothing: no device is available


def torch_facts(found: StackFacts) -> TorchFacts:
    """torch's facts, or NO_TORCH when it was not imported (torch_error says why)."""
    return found.torch or NO_TORCH


def version(text: str | None) -> Version | None:
    try:
        return Version(str(text).split("+")[0]) if text else None
    except InvalidVersion:
        return None


def rosetta(found: StackFacts) -> bool:
    """An x86_64 Python translated by Rosetta on an Apple Silicon Mac: torch there has no MPS."""
    py = found.python
    return py.sys_platform == "darwin" and py.machine == "x86_64" and (
        py.proc_translated == "1" or py.arm64_hardware == "1")


def smi_gpus(found: StackFacts) -> tuple[SmiGpu, ...]:
    return found.nvidia_smi.gpus if found.nvidia_smi else ()


def available(found: StackFacts, device: str) -> bool:
    return device == "cpu" or torch_facts(found).available(device)


def best_available(found: StackFacts) -> str:
    """The device accelerate picks when nothing forces the CPU: MPS, then CUDA, then XPU (state.py)."""
    return next((d for d in ("mps", "cuda", "xpu") if available(found, d)), "cpu")


def machine_offers(found: StackFacts) -> str:
    """The best device this machine has, even when torch cannot use it (what `device = "auto"` asks for)."""
    best = best_available(found)
    if best != "cpu":
        return best
    py = found.python
    if smi_gpus(found) or torch_facts(found).cuda_device_count_machine:
        return "cuda"
    if py.sys_platform == "darwin" and (py.machine == "arm64" or rosetta(found)):
        return "mps"
    return "cpu"


def gpu_line(d: CudaDevice) -> str:
    """`NVIDIA GeForce RTX 3060, sm_86, 11.8 GiB`."""
    return f"{d.name}, sm_{d.capability[0]}{d.capability[1]}, {d.total_memory / GIB:.1f} GiB"


def smi_line(gpu: SmiGpu) -> str:
    return f"{gpu.name} ({gpu.memory_mib} MiB, sm {gpu.capability}, driver {gpu.driver})"


def device_lines(found: StackFacts) -> list[str]:
    """What the probe saw, one fact a line, for details and `lorasetup env`."""
    py = found.python
    lines = [f"python {py.version} {py.machine} at {py.executable}"]
    if py.sys_platform == "darwin":
        lines.append(f"macOS {py.mac_ver}; Rosetta: {'yes' if rosetta(found) else 'no'}")
    t = found.torch
    if t is None:
        return lines + [f"torch: cannot be imported: {found.torch_error}"]
    lines.append(f"torch {t.version} ({t.build_label()})" + (f", torchvision {t.torchvision}" if t.torchvision else ""))
    lines.append(f"cuda available: {yes(t.cuda_available)}, {t.cuda_device_count or 0} device(s)")
    lines += [f"  cuda:{i} {gpu_line(d)}" for i, d in enumerate(t.cuda_devices)]
    if t.cuda_arch_list:
        lines.append(f"  torch built for: {' '.join(t.cuda_arch_list)}")
    mem = t.mps_recommended_max_memory
    lines.append(f"mps built: {yes(t.mps_built)}, available: {yes(t.mps_available)}"
                 + (f", recommended max memory {mem / GIB:.1f} GiB" if mem else ""))
    if t.xpu_available:
        lines.append(f"xpu available: {', '.join(t.xpu_devices) or 'yes'}")
    smi = found.nvidia_smi
    if smi:
        lines.append(f"nvidia-smi: {'; '.join(smi_line(g) for g in smi.gpus) or smi.error or 'no GPU listed'}")
    lines += [f"torch warned: {w.splitlines()[0]}" for w in t.warnings]
    return lines


def yes(value: Any) -> str:
    return "yes" if value else "no"
