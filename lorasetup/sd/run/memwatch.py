"""Measure a running training process tree's memory from outside it, without changing its command.

Host memory: the memory of the whole tree (the `accelerate launch` process, the trainer it starts and its
data-loader workers), summed, sampled twice a second through psutil: proportional set sizes on Linux (forked
workers share the trainer's pages, so their resident sets would count those pages again), resident sets
elsewhere.
Device memory: on CUDA, `nvidia-smi --query-compute-apps=pid,used_memory` lists each process's GPU memory
(its CUDA context plus what the caching allocator reserved), read once a second for the tree's pids. MPS
memory cannot be read from outside the process, so none is reported there.

The sampled peaks can miss a spike shorter than the interval; the kernel's own high-water mark of the
biggest process (wait4's ru_maxrss, lorasetup.sd.run.stream) cannot, and is reported beside them.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lorasetup.sd.memory.machine import MIB, smi_rows

if TYPE_CHECKING:
    import psutil

HOST_INTERVAL_S = 0.5
DEVICE_INTERVAL_S = 1.0
SMI_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
LINUX = sys.platform.startswith("linux")


@dataclass
class Peaks:
    """The highest sums seen: host RSS of the tree, and its GPU memory (None when it cannot be read)."""

    host_bytes: int | None = None
    device_bytes: int | None = None
    samples: int = 0
    device_source: str | None = None  # "nvidia-smi" when device memory was read


def _size(proc: psutil.Process) -> int:
    """A process's memory in bytes: on Linux its proportional set size (private pages plus its share of pages
    it shares; data-loader workers are forked from the trainer and share its model pages, so summing their RSS
    would count those pages once per worker), elsewhere its resident set."""
    info = proc.memory_full_info() if LINUX else proc.memory_info()
    return int(getattr(info, "pss", info.rss))


def tree_rss(root: int) -> tuple[set[int], int]:
    """The pids of `root` and its descendants, and their summed memory in bytes (PSS on Linux, else RSS);
    no pids once `root` has exited."""
    import psutil  # noqa: PLC0415 - imported when a run is sampled, not at every lorasetup start (~15 ms)
    try:
        parent = psutil.Process(root)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return set(), 0
    pids, total = set(), 0
    for proc in procs:
        try:
            total += _size(proc)
        except psutil.Error:
            continue  # it ended meanwhile, or is not ours to read
        pids.add(proc.pid)
    return pids, total


def process_gpu_memory(smi: str, pids: set[int]) -> int | None:
    """The GPU memory of `pids` in bytes from nvidia-smi's per-process list; None when it cannot answer."""
    rows, why = smi_rows(smi, SMI_QUERY, 10)
    if why:
        return None
    return sum(int(c[1]) * MIB for c in rows if len(c) == 2 and c[0].isdigit() and int(c[0]) in pids
               and c[1].isdigit())


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
