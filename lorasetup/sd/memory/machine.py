"""How much memory the machine has free right now: the host's total and available RAM (psutil) and each NVIDIA
GPU's total and free memory (`nvidia-smi --query-gpu`), read fresh once per run in lorasetup's own process.

Not from the stack probe: its answer is kept between runs by the warm cache (lorasetup.sd.warm) for up to a day,
and free memory changes from one minute to the next. What does not change (torch's view of the devices, Metal's
recommended working set) still comes from the probe. Reading these takes milliseconds and imports no torch.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorasetup.engine.context import Context

KEY = "memory:now"  # the Context memo key (tests put recorded figures here)
SMI_QUERY = ["--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]
MIB = 1024 ** 2


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as nvidia-smi numbers it (the machine's index, before CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class MemoryFacts:
    """Host RAM and GPU memory now; None or empty where it could not be read (`notes` says why)."""

    host_total_bytes: int | None = None
    host_available_bytes: int | None = None
    gpus: tuple[GpuMemory, ...] = ()
    notes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> MemoryFacts:
        """From a recording's `_memory` block: {"host": {"total", "available"}, "gpus": [{index, name, total,
        free}]}."""
        host = raw.get("host") or {}
        gpus = tuple(GpuMemory(int(g["index"]), str(g["name"]), int(g["total"]), int(g["free"]))
                     for g in raw.get("gpus") or ())
        return cls(host.get("total"), host.get("available"), gpus)


def host_memory() -> tuple[int, int]:
    """(total, available) of the host's RAM."""
    import psutil  # noqa: PLC0415 - imported when memory is read, not at every lorasetup start (~15 ms)
    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


def smi_rows(smi: str, query: list[str], timeout: float) -> tuple[list[list[str]], str | None]:
    """nvidia-smi's CSV answer to `query`, one list of stripped cells a line; or no rows and why."""
    try:
        proc = subprocess.run([smi, *query], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi did not answer: {exc}"
    if proc.returncode != 0:
        return [], f"nvidia-smi failed: {(proc.stderr or proc.stdout).strip()[:200]}"
    return [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines()], None


def gpu_memory(smi: str) -> tuple[tuple[GpuMemory, ...], str | None]:
    """Every GPU nvidia-smi lists, with its total and free memory; or why none."""
    rows, why = smi_rows(smi, SMI_QUERY, 15)
    gpus = [GpuMemory(int(c[0]), c[1], int(c[2]) * MIB, int(c[3]) * MIB) for c in rows
            if len(c) == 4 and c[0].isdigit() and c[2].isdigit() and c[3].isdigit()]
    return tuple(gpus), why


def read(smi: str | None) -> MemoryFacts:
    total, available = host_memory()
    gpus, why = gpu_memory(smi) if smi else ((), None)
    return MemoryFacts(total, available, gpus, (why,) if why else ())


def memory_facts(ctx: Context) -> MemoryFacts:
    """The machine's memory now, once per run."""
    return ctx.memo(KEY, lambda: read(shutil.which("nvidia-smi")))
