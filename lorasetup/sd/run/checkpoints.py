"""A run's checkpoints: the LoRA files in its output folder in step order, each with a verdict, the state
folders beside them, and, while the run writes them, each file verified once it is complete.

sd-scripts writes `<name>-step00000230.safetensors` (every N steps), `<name>-000001.safetensors` (every N
epochs) and `<name>.safetensors` (the end), with `--save_state` a `<name>-step00000230-state` folder beside each,
and prints `saving checkpoint: <file>` before each save. safetensors writes a file in place, so a file is
verified only once its size and mtime have settled and its header accounts for every byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine.files import FileProblem, read_json
from lorasetup.sd.facts import EPOCH_FILE, STATE_DIR, STEP_FILE
from lorasetup.sd.lora import Expect, LoraReport, expect_from_metadata, verify_lora
from lorasetup.sd.run.stream import Stop
from lorasetup.sd.run.watch import Watch
from lorasetup.sd.safetensors_header import HeaderError, read_header

LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt")  # --save_model_as (ckpt and pt are pickles: never opened)
SCAN_S = 0.5  # how often the output folder is listed while the run goes on
STABLE_S = 1.0  # a file unchanged this long, with a header that accounts for every byte, is complete
TRUNCATED_GRACE_S = 30.0  # a file whose header promises more bytes gets this long before it is called broken


@dataclass
class Checkpoint:
    """One LoRA file of a run. `state`: ok, broken, not verified (a pickle), removed (deleted by sd-scripts'
    save_last_n_* after it was verified)."""

    path: Path
    step: int | None
    epoch: int | None
    mtime: float
    report: LoraReport | None = None
    state: str = "ok"
    note: str = ""

    @property
    def size(self) -> int | None:
        return self.report.size if self.report else None

    @property
    def nonfinite(self) -> bool:
        return bool(self.report and self.report.nonfinite_tensors)

    @property
    def verdict(self) -> str:
        """`ok`, or the state with its first problem."""
        if self.state == "broken" and self.report and self.report.problems:
            return f"broken: {self.report.problems[0]}"
        return self.state + (f": {self.note}" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "file": self.path.name, "path": str(self.path),
                "size_bytes": self.size, "state": self.state, "verdict": self.verdict,
                "summary": self.report.summary() if self.report else None,
                "report": self.report.to_dict() if self.report else None}


def name_position(path: Path) -> tuple[int | None, int | None]:
    """(step, epoch) from an sd-scripts checkpoint name: `-step00000230` or `-000001`; (None, None) else."""
    stem = path.name.rsplit(".", 1)[0]
    if m := STEP_FILE.search(stem):
        return int(m["step"]), None
    if m := EPOCH_FILE.search(stem):
        return None, int(m["epoch"])
    return None, None


def lora_files(folder: Path) -> list[Path]:
    """The LoRA files directly in `folder` (state folders and their contents are not LoRAs)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix in LORA_EXTENSIONS and p.is_file())
    except OSError:
        return []


def examine(path: Path, expect: Expect, saved_at: int | None = None) -> Checkpoint:
    """Verify one file (a pickle is only listed) and place it: step from its metadata, else from the run's
    `saving checkpoint:` line, else from its name."""
    step, epoch = name_position(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    if path.suffix != ".safetensors":
        return Checkpoint(path, step or saved_at, epoch, mtime, state="not verified",
                          note="a pickle (.ckpt/.pt) is never opened; use --save_model_as=safetensors")
    report = verify_lora(path, expect)
    return Checkpoint(path, report.step or saved_at or step, report.epoch or epoch, mtime, report,
                      "ok" if report.ok else "broken")


def in_order(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """By step; files whose step is unknown after them, by modification time."""
    return sorted(checkpoints, key=lambda c: (c.step is None, c.step or 0, c.mtime, c.path.name))


def last_good(checkpoints: list[Checkpoint], before_step: int | None = None) -> Checkpoint | None:
    """The latest verified checkpoint (with a known step below `before_step` when given)."""
    good = [c for c in in_order(checkpoints) if c.state == "ok"
            and (before_step is None or (c.step is not None and c.step < before_step))]
    return good[-1] if good else None


def own_expect(path: Path) -> Expect:
    """What a file's own metadata says was asked (an unreadable file is judged by its header anyway)."""
    try:
        return expect_from_metadata(read_header(path).metadata)
    except (HeaderError, OSError):
        return expect_from_metadata({})


def verify_folder(folder: Path, expect: Expect | None = None) -> list[Checkpoint]:
    """Every LoRA in `folder`, verified against `expect` (None: each file's own metadata), in step order."""
    return in_order([examine(path, expect or own_expect(path)) for path in lora_files(folder)])


@dataclass(frozen=True)
class StateDir:
    """A `--save_state` folder: what `--resume` takes."""

    path: Path
    step: int | None
    size: int


def folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _state_step(path: Path, step: str | None) -> int | None:
    """train_state.json's current_step (train_network.py save_model_hook), else the step in the name."""
    try:
        data = read_json(path / "train_state.json")
        return int(data["current_step"])
    except (FileProblem, ValueError, KeyError, TypeError):
        return int(step) if step else None


def state_dirs(folder: Path | None, since: float = 0.0) -> list[StateDir]:
    """The state folders in `folder` written at or after `since` (a time.time()), oldest step first."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        m = STATE_DIR.match(path.name)
        if m and path.is_dir() and path.stat().st_mtime >= since:
            found.append(StateDir(path, _state_step(path, m["step"]), folder_size(path)))
    return sorted(found, key=lambda s: (s.step is None, s.step or 0, s.path.stat().st_mtime))


def _complete(path: Path) -> bool:
    """True when the header can be read and the file holds every byte it promises."""
    try:
        read_header(path)
    except (HeaderError, OSError):
        return False
    return True


@dataclass
class _Seen:
    signature: tuple[int, int]  # size, mtime_ns
    since: float  # when this signature was first seen (monotonic)


@dataclass
class CheckpointTracker:
    """Watches the run's output folder and verifies each LoRA once it is complete, on a worker thread so the
    output keeps flowing. As a Monitor it stops the run at a checkpoint with NaN/inf tensors (unless on_nan
    is "warn"). Files that were there before the run and are left untouched are not the run's."""

    folder: Path | None
    expect: Expect
    on_nan: str = "stop"
    on_verified: Callable[[Checkpoint], None] | None = None
    baseline: dict[Path, tuple[int, int]] = field(default_factory=dict)
    seen: dict[Path, _Seen] = field(default_factory=dict)
    done: dict[Path, tuple[tuple[int, int], Checkpoint]] = field(default_factory=dict)
    running: dict[Path, tuple[tuple[int, int], Future[Checkpoint]]] = field(default_factory=dict)
    stopped_on: Path | None = None
    next_scan: float = 0.0

    def __post_init__(self) -> None:
        self.baseline = self._signatures()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorasetup-verify")

    def _signatures(self) -> dict[Path, tuple[int, int]]:
        out = {}
        for path in lora_files(self.folder) if self.folder else []:
            try:
                st = path.stat()
            except OSError:
                continue
            out[path] = (st.st_size, st.st_mtime_ns)
        return out

    def poll(self, watch: Watch, now: float) -> Stop | None:
        self._collect()
        if now >= self.next_scan:
            self.next_scan = now + SCAN_S
            self._scan(watch, now)
        return self._stop()

    def _scan(self, watch: Watch, now: float) -> None:
        for path, signature in self._signatures().items():
            if self.baseline.get(path) == signature or self._known(path, signature):
                continue
            seen = self.seen.get(path)
            if seen is None or seen.signature != signature:
                self.seen[path] = _Seen(signature, now)
            elif now - seen.since >= STABLE_S and (_complete(path) or now - seen.since >= TRUNCATED_GRACE_S):
                self._submit(path, signature, watch)

    def _known(self, path: Path, signature: tuple[int, int]) -> bool:
        return (path in self.done and self.done[path][0] == signature) or \
            (path in self.running and self.running[path][0] == signature)

    def _submit(self, path: Path, signature: tuple[int, int], watch: Watch) -> None:
        self.seen.pop(path, None)
        self.running[path] = (signature, self.pool.submit(examine, path, self.expect, saved_step(watch, path)))

    def _collect(self) -> None:
        for path, (signature, future) in list(self.running.items()):
            if future.done():
                del self.running[path]
                self.done[path] = (signature, future.result())
                if self.on_verified is not None:
                    self.on_verified(future.result())

    def _stop(self) -> Stop | None:
        if self.on_nan != "stop" or self.stopped_on is not None:
            return None
        for path, (_, checkpoint) in self.done.items():
            if checkpoint.nonfinite and checkpoint.report is not None:
                self.stopped_on = path
                return Stop("nonfinite-checkpoint", f"{path.name} holds NaN/inf in "
                                                    f"{checkpoint.report.nonfinite_tensors} tensors")
        return None

    def finish(self, watch: Watch) -> list[Checkpoint]:
        """After the run: wait for running checks, verify what is left (the writer is gone: no settling), mark
        files deleted since, and return every checkpoint of the run in order."""
        for _, future in self.running.values():
            future.result()
        self._collect()
        self.pool.shutdown()
        for path, signature in self._signatures().items():
            if self.baseline.get(path) != signature and not self._known(path, signature):
                late = examine(path, self.expect, saved_step(watch, path))  # written too late to settle in the run
                self.done[path] = (signature, late)
                if self.on_verified is not None:
                    self.on_verified(late)
        for _, checkpoint in self.done.values():
            if not checkpoint.path.exists():
                checkpoint.state, checkpoint.note = "removed", "deleted by sd-scripts (save_last_n_*)"
        return in_order([c for _, c in self.done.values()])


def saved_step(watch: Watch, path: Path) -> int | None:
    """The step at which the run printed `saving checkpoint: <path>` (its path may be relative to the run's
    working folder, which is lorasetup's)."""
    for printed, step in watch.saved.items():
        if Path(printed).resolve() == path.resolve():
            return step
    return None
