"""The bridge to the training interpreter: run a probe program there, read one JSON object back.

lorasetup itself never imports torch, accelerate or sd-scripts. A probe program is a module file that imports
only the standard library at module level and defines `main(params, checkpoint) -> dict` (they live in
lorasetup/sd/programs/); the training interpreter runs it through probe_entry.py, which sends whatever it
prints to stderr, so import noise cannot corrupt the answer. A crash, a hang or garbage becomes a ProbeError
naming the interpreter and what it printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

MARKER = "@@LORASETUP-PROBE@@"
ENTRY = Path(__file__).with_name("probe_entry.py")


# Who wants to hear about the processes started here (Context.memo sets it, so a runner that gives up on a
# check can stop that check's processes): called with the process, returns the call that forgets it again.
Tracker = Callable[[subprocess.Popen], Callable[[], None]]
_TRACKER: ContextVar[Tracker | None] = ContextVar("lorasetup_process_tracker", default=None)


@contextmanager
def tracked(tracker: Tracker) -> Iterator[None]:
    """Report every process `run_probe` (or `track`) starts in this context to `tracker`."""
    token = _TRACKER.set(tracker)
    try:
        yield
    finally:
        _TRACKER.reset(token)


def track(proc: subprocess.Popen) -> Callable[[], None]:
    """Tell the current tracker about `proc`; returns the call that forgets it once it has ended."""
    tracker = _TRACKER.get()
    return tracker(proc) if tracker is not None else (lambda: None)


def stop(proc: subprocess.Popen, reason: str) -> None:
    """Kill a tracked process and its children, saying why (run_probe reports the reason, not a crash)."""
    if proc.poll() is None:
        proc.lorasetup_stopped = reason  # type: ignore[attr-defined]
        kill_tree(proc)


class ProbeError(Exception):
    """The training interpreter could not answer; the message says which one and what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def tail(text: str, lines: int = 8) -> str:
    """The last non-empty lines of some output, for messages."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_program(python: Path, program: Path, params: Mapping[str, Any] | None = None, timeout: float = 60.0,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run the probe program `program` in `python` with `params` and return its answer, or raise ProbeError."""
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    try:
        proc = subprocess.Popen([str(python), str(ENTRY), MARKER, str(program)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                cwd=str(cwd) if cwd else None, start_new_session=True,
                                encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ProbeError(f"the training interpreter {python} cannot be started: {exc.strerror or exc}") from None
    forget = track(proc)
    try:
        out, err = proc.communicate(json.dumps(dict(params or {})), timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise ProbeError(f"the training interpreter {python} did not answer within {timeout:.0f} s "
                         f"(a hang while importing?). Last output:\n{tail(err + out)}", err + out) from None
    finally:
        forget()
    stopped = getattr(proc, "lorasetup_stopped", None)
    if stopped:
        raise ProbeError(f"the training interpreter {python} was stopped: {stopped}", err + out)
    answer = last_answer(out)
    if answer is not None:
        return answer
    if proc.returncode != 0:
        raise ProbeError(f"the training interpreter {python} crashed (exit {proc.returncode}):\n"
                         f"{tail(err + out)}", err + out)
    raise ProbeError(f"the training interpreter {python} answered with no readable result:\n"
                     f"{tail(out + err)}", out + err)


def last_answer(out: str) -> dict[str, Any] | None:
    """The last answer line a probe wrote (a checkpoint, or its final answer), None when there is none."""
    for line in reversed(out.splitlines()):
        if line.startswith(MARKER):
            try:
                value = json.loads(line[len(MARKER):])
            except json.JSONDecodeError:
                return None
            if isinstance(value, dict):
                return value
    return None


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a child started with start_new_session=True, and everything it started."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
