"""Run a training command as a watched child process and stop its whole process group when told to.

The child gets its own session (process group), stdin from /dev/null and one pipe for stdout and stderr; a
thread reads the pipe so the main loop can poll its monitors while output is quiet. Each chunk is echoed
(`echo`) and parsed (`Watch`); after each chunk, and every TICK_S without one, every monitor may answer a Stop.
The output monitor (`OutputStops`) stops at the first non-finite loss, the first traceback and "No data found".
Whatever happens, including an exception or Ctrl-C in lorasetup itself, no process of the run is left behind.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

from lorasetup.engine.probe import kill_tree, track
from lorasetup.engine.result import CheckFailed
from lorasetup.sd.run.memwatch import NO_SAMPLER, MemorySampler
from lorasetup.sd.run.watch import Watch

TICK_S = 0.25  # how often monitors are polled while the child is quiet
EXIT_GRACE_S = 60.0  # after its output ends, a run without a deadline gets this long to exit
GROUP_GONE_S = 5.0  # after SIGKILL, how long to wait for the group's processes to be gone
EXIT_DRAIN_S = 2.0  # after the child exited, output still coming from what it left running is read this long
SIGNAL_STOPS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


@dataclass(frozen=True)
class Stop:
    """Why lorasetup stops a run: a short `reason` (nonfinite, traceback, stall, ...) and a sentence."""

    reason: str
    message: str = ""


class Monitor(Protocol):
    """Something that looks at the run after each chunk of output (and each tick) and may stop it."""

    def poll(self, watch: Watch, now: float) -> Stop | None: ...


@dataclass(frozen=True)
class OutputStops:
    """Stop when the output alone says so: a non-finite loss (unless on_nan is "warn"), a traceback, no data."""

    on_nan: str = "stop"

    def poll(self, watch: Watch, now: float) -> Stop | None:
        reason = watch.stop_reason(now, self.on_nan)
        return Stop(reason) if reason else None


@dataclass
class RunOutcome:
    returncode: int | None
    stopped: str | None  # a Stop's reason (nonfinite | no-data | traceback | timeout | ...), None: ran to its end
    wall_s: float
    peak_rss_bytes: int | None  # the child tree's peak resident set, when the child was reaped normally
    watch: Watch
    stop_message: str | None = None


class _Child:
    """The process and the thread that reads its merged output into a queue (None marks the end)."""

    def __init__(self, argv: list[str], cwd: Path | None, env: dict[str, str] | None) -> None:
        try:
            self.proc = subprocess.Popen(argv, cwd=str(cwd) if cwd else None, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=os.name != "nt",
                                         creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        except OSError as exc:
            raise CheckFailed(f"cannot start {argv[0]}: {exc.strerror or exc}",
                              hint="check the training interpreter (--python) and its accelerate install") from None
        self.forget = track(self.proc)  # a runner that gives up on the smoke check stops the run
        self.chunks: queue.Queue[str | None] = queue.Queue()
        self.exited_at: float | None = None
        self.reader = threading.Thread(target=self._read, name="lorasetup-run-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while data := os.read(fd, 65536):
            self.chunks.put(decoder.decode(data))
        self.chunks.put(decoder.decode(b"", final=True))
        self.chunks.put(None)

    def get(self, wait: float) -> str | None:
        """The next chunk of output, "" when none came within `wait` seconds, None at the end of the output."""
        try:
            return self.chunks.get(timeout=wait)
        except queue.Empty:
            return ""

    def ended(self, now: float, quiet: bool) -> bool:
        """True when the child has exited and its output is read: a quiet moment after the exit, or EXIT_DRAIN_S
        (a process it left behind may hold the pipe open and keep writing; it is stopped when the child is
        reaped)."""
        if self.exited_at is None and _exited(self.proc):
            self.exited_at = now
        return self.exited_at is not None and (quiet or now - self.exited_at >= EXIT_DRAIN_S)

    def stop(self) -> None:
        """Kill the whole process group and reap the child (no peak figure: the launcher did not reap it)."""
        _stop_group(self.proc)
        _reap(self.proc, time.monotonic() + 30)

    def close(self, take: Callable[[str], None]) -> None:
        """Hand over what is still queued and close the pipe."""
        self.reader.join(timeout=5)
        while not self.chunks.empty():
            item = self.chunks.get_nowait()
            if item:
                take(item)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.forget()


def _group_alive(pgid: int) -> bool:
    """True while a process of the group is alive (a zombie waiting for its parent is not)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # pid (comm) state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group and wait (up to GROUP_GONE_S) until none of it is left running."""
    kill_tree(proc)
    deadline = time.monotonic() + GROUP_GONE_S
    while os.name != "nt" and _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _exited(proc: subprocess.Popen) -> bool:
    """True once the child has exited; it stays a zombie (not reaped), so its process group id cannot be reused
    while what is left of the group is stopped."""
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _reap(proc: subprocess.Popen, deadline: float) -> tuple[bool, int | None]:
    """Wait for the child until `deadline`; once it exited, stop whatever it left running in its process group
    (a stuck data-loader worker, say), then reap it: (exited, peak RSS in bytes of it and its reaped children)."""
    while not _exited(proc):
        if time.monotonic() >= deadline:
            return False, None
        time.sleep(0.05)
    _stop_group(proc)
    if not hasattr(os, "wait4"):
        proc.wait()
        return True, None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return True, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@contextlib.contextmanager
def stop_signals(enabled: bool) -> Iterator[list[Stop]]:
    """While enabled (and on the main thread), SIGINT and SIGTERM are recorded as Stops instead of ending
    lorasetup at once, so the run can be stopped cleanly and still be summarised."""
    received: list[Stop] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(Stop(SIGNAL_STOPS[signal.Signals(signum)], f"{signal.Signals(signum).name} received"))

    previous = {sig: signal.signal(sig, handler) for sig in SIGNAL_STOPS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _pump(child: _Child, take: Callable[[str], None], watch: Watch, monitors: Sequence[Monitor],
          deadline: float, signalled: list[Stop]) -> Stop | None:
    """Feed the output until it ends (None) or something says stop."""
    while not signalled:
        left = deadline - time.monotonic()
        if left <= 0:
            return Stop("timeout")
        item = child.get(min(TICK_S, left))
        if item is None:
            return None
        if item:
            take(item)
        now = time.monotonic()
        for monitor in monitors:
            if stop := monitor.poll(watch, now):
                return stop
        if child.ended(now, quiet=not item):
            return None
    return signalled[0]


def run_streaming(argv: list[str], *, timeout: float | None, echo: IO[str] | None, cwd: Path | None = None,
                  env: dict[str, str] | None = None, watch: Watch | None = None,
                  monitors: Sequence[Monitor] | None = None, signals: bool = False,
                  sampler: MemorySampler = NO_SAMPLER) -> RunOutcome:
    """Run `argv`, echo its merged output live to `echo`, parse it into `watch`, and stop the whole process
    group when a monitor says so (default: the output's own stops), at `timeout`, or, with `signals`, at
    SIGINT/SIGTERM. A `sampler` watches the process tree's memory from its start until it has exited."""
    start = time.monotonic()
    watch = watch or Watch(start)
    deadline = start + timeout if timeout is not None else math.inf
    checks = (OutputStops(),) if monitors is None else monitors

    def take(text: str) -> None:
        if echo is not None:
            echo.write(text)
            echo.flush()
        watch.feed(text, time.monotonic())

    child = _Child(argv, cwd, env)
    sampler.start(child.proc.pid)
    try:
        with stop_signals(signals) as signalled:
            stop = _pump(child, take, watch, checks, deadline, signalled)
            grace = deadline if math.isfinite(deadline) else time.monotonic() + EXIT_GRACE_S
            exited, peak = (False, None) if stop else _reap(child.proc, grace)
            if not exited:
                stop = stop or Stop("timeout")
                child.stop()
    except BaseException:
        child.stop()
        raise
    finally:
        sampler.stop()
    child.close(take)
    watch.finish(time.monotonic())
    return RunOutcome(child.proc.returncode, stop.reason if stop else None, time.monotonic() - start, peak, watch,
                      stop.message if stop else None)
