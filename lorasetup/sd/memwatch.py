"""Measure a running training process tree's memory from outside it, without changing its command.

Host memory: the memory of the whole tree (the `accelerate launch` process, the trainer it starts and its
data-loader workers), summed, sampled twice a second: proportional set sizes from /proc on Linux (forked
workers share the trainer's pages, so their resident sets would count those pages again), resident sets
from `ps` elsewhere.
Device memory: on CUDA, `nvidia-smi --query-compute-apps=pid,used_memory` lists each process's GPU memory
(its CUDA context plus what the caching allocator reserved), read once a second for the tree's pids. MPS
memory cannot be read from outside the process, so none is reported there.

The sampled peaks can miss a spike shorter than the interval; the kernel's own high-water mark of the
biggest process (wait4's ru_maxrss, lorasetup.sd.run.stream) cannot, and is reported beside them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOST_INTERVAL_S = 0.5
DEVICE_INTERVAL_S = 1.0
SMI_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
MIB = 1024 ** 2


@dataclass
class Peaks:
    """The highest sums seen: host RSS of the tree, and its GPU memory (None when it cannot be read)."""

    host_bytes: int | None = None
    device_bytes: int | None = None
    samples: int = 0
    device_source: str | None = None  # "nvidia-smi" when device memory was read


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS bytes) for every process: /proc on Linux, else `ps`."""
    if Path("/proc/self/stat").exists():
        return _proc_table_linux()
    try:
        out = subprocess.run(["ps", "-axo", "pid=,ppid=,rss="], capture_output=True, text=True, timeout=5,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    table = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 3 and all(c.isdigit() for c in cells):
            table[int(cells[0])] = (int(cells[1]), int(cells[2]) * 1024)  # ps reports KiB
    return table


def _proc_table_linux() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, 0): the sizes are read afterwards for the tree's processes only."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        table[int(entry.name)] = (int(stat[stat.rfind(")") + 2:].split()[1]), 0)  # after "pid (comm) ": state, ppid
    return table


def _pss(pid: int) -> int:
    """A process's proportional set size in bytes: its private pages plus its share of pages it shares.
    Data-loader workers are forked from the trainer and share its model pages; summing their RSS would count
    those pages once per worker, summing PSS counts them once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (OSError, IndexError, ValueError):
        return 0
    return int(statm[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> tuple[set[int], int]:
    """The pids of `root` and its descendants, and their summed memory in bytes (PSS on Linux, else RSS)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pids, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in pids:
            pids.add(pid)
            todo.extend(children.get(pid, []))
    linux = Path("/proc/self/stat").exists()
    return pids, sum(_pss(p) if linux else table[p][1] for p in pids)


def process_gpu_memory(smi: str, pids: set[int]) -> int | None:
    """The GPU memory of `pids` in bytes from nvidia-smi's per-process list; None when it cannot answer."""
    try:
        proc = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    total = 0
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0].isdigit() and int(cells[0]) in pids and cells[1].isdigit():
            total += int(cells[1]) * MIB
    return total


class MemorySampler:
    """Samples a process tree's memory in a background thread between `start(pid)` and `stop()`."""

    def __init__(self, device: str | None = None, smi: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        wants_gpu = enabled and device in (None, "auto", "cuda")
        self.smi = smi if smi is not None else (shutil.which("nvidia-smi") if wants_gpu else None)
        self.peaks = Peaks(device_source="nvidia-smi" if self.smi else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._loop, args=(pid,), name="lorasetup-memwatch", daemon=True)
        self._thread.start()

    def stop(self) -> Peaks:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        return self.peaks

    def _loop(self, root: int) -> None:
        next_device = 0.0
        while not self._stop.is_set():
            pids, rss = tree_rss(root)
            if not pids:
                return
            self.peaks.samples += 1
            self.peaks.host_bytes = max(self.peaks.host_bytes or 0, rss)
            now = time.monotonic()
            if self.smi and now >= next_device:
                used = process_gpu_memory(self.smi, pids)
                if used is not None:
                    self.peaks.device_bytes = max(self.peaks.device_bytes or 0, used)
                next_device = now + DEVICE_INTERVAL_S
            self._stop.wait(HOST_INTERVAL_S)


NO_SAMPLER = MemorySampler(enabled=False)  # run_streaming's default: measures nothing, costs nothing
