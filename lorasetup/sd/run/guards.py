"""The long run's guards beside the output's own stops: a stall (or a load that never ends), and a disk that
will not hold the next save. Each is a Monitor of the stream: it looks after every chunk and tick."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.sd.run.checkpoints import CheckpointTracker, state_dirs
from lorasetup.sd.run.stream import Stop
from lorasetup.sd.run.units import duration, size
from lorasetup.sd.run.watch import Watch

STALL_FACTOR = 10  # a step is overdue after this many median steps (or --stall-timeout, whichever is longer)
DISK_CHECK_S = 2.0  # the disk is looked at on each new step, at most this often
# A state folder (accelerate save_state) holds the LoRA's weights in fp32 and the optimizer's moments (two more
# copies for AdamW) plus RNG and scheduler state: about 3 x 4 bytes per parameter, i.e. up to 6x a LoRA saved
# in fp16. Used only until the run's first state folder can be measured.
STATE_PER_LORA_BYTE = 6


@dataclass
class StallGuard:
    """Stop a run that stopped making steps: no new step for max(10 x the median seconds per step,
    stall_timeout_s) once steps run; no first step within load_timeout_s of the start."""

    stall_timeout_s: float
    load_timeout_s: float

    def limit(self, watch: Watch) -> float:
        median = watch.median_step_s()
        return max(STALL_FACTOR * median, self.stall_timeout_s) if median is not None else self.stall_timeout_s

    def poll(self, watch: Watch, now: float) -> Stop | None:
        last = watch.last_step_at
        if last is None:
            if now - watch.start < self.load_timeout_s:
                return None
            phase = "loading (no steps bar yet)" if watch.bar_zero_at is None else "in the first step"
            return Stop("load-timeout", f"no first step within the load timeout of {duration(self.load_timeout_s)}: "
                                        f"still {phase}")
        limit = self.limit(watch)
        if now - last < limit:
            return None
        median = watch.median_step_s()
        why = f"{STALL_FACTOR} x the median {median:.1f} s/step" if median is not None and \
            STALL_FACTOR * median > self.stall_timeout_s else f"--stall-timeout {duration(self.stall_timeout_s)}"
        return Stop("stall", f"no new step for {duration(now - last)} after step {watch.steps_done} "
                             f"(limit {duration(limit)}: {why})")


def free_bytes(folder: Path) -> int:
    """Free space for an unprivileged writer on the file system that holds `folder` (or its nearest parent that
    exists: sd-scripts creates output_dir at the first save)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass
class DiskGuard:
    """Stop before a save the disk cannot hold. Ahead of each save point of the step plan, the free space of
    the output folder is compared with what the save writes: the LoRA (the largest one verified so far, else the
    smoke run's) and, with --save_state, a state folder (the largest one so far, else an estimate). Short of it,
    a note at once, and a stop at the step before the save, so no half-written file or state is left."""

    folder: Path | None
    saves: list[dict[str, Any]]
    tracker: CheckpointTracker
    note: Callable[[str], None]
    lora_bytes: int | None = None
    save_state: bool = False
    state_on_end: bool = False
    warned: set[int] = field(default_factory=set)
    checked: tuple[int, float] = (-1, 0.0)

    def next_save(self, step: int) -> dict[str, Any] | None:
        return next((s for s in self.saves if s["step"] > step), None)

    def need(self, save: dict[str, Any]) -> tuple[int, str] | None:
        """Bytes the save writes and how they add up; None while the LoRA's size is unknown."""
        loras = [c.size for _, c in self.tracker.done.values() if c.size]
        lora = max(loras, default=self.lora_bytes)
        if lora is None:
            return None
        with_state = self.state_on_end if save["kind"] == "final" else self.save_state
        if not with_state:
            return lora, f"LoRA {size(lora)}"
        states = [s.size for s in state_dirs(self.folder)]
        state = max(states) if states else STATE_PER_LORA_BYTE * lora
        return lora + state, f"LoRA {size(lora)} + state folder {'' if states else '~'}{size(state)}"

    def poll(self, watch: Watch, now: float) -> Stop | None:
        step = watch.steps_done
        if self.folder is None or not step or (step == self.checked[0] and now - self.checked[1] < DISK_CHECK_S):
            return None
        self.checked = (step, now)
        save = self.next_save(step)
        need = self.need(save) if save else None
        if save is None or need is None:
            return None
        free = free_bytes(self.folder)
        if free >= need[0]:
            return None
        message = (f"{size(free)} free at {self.folder}, the save at step {save['step']} ({save['file']}) needs "
                   f"{size(need[0])} ({need[1]})")
        if step >= save["step"] - 1:
            return Stop("disk", message + f": stopped at step {step}, before sd-scripts would fail mid-save "
                                          "(No space left on device)")
        if save["step"] not in self.warned:
            self.warned.add(save["step"])
            self.note(f"low disk: {message}; free some space before step {save['step']} or the run stops there")
        return None
