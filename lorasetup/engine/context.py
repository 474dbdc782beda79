"""One run's shared state: the Target, memoized computations and probes, background prefetch, and the
processes they started (so a runner that gives up on a check can stop them)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from lorasetup.engine.probe import run_program, stop, tracked
from lorasetup.engine.target import Target

T = TypeVar("T")
# The check whose thread is running (set by the runner): the memo keys it waits on are recorded for it.
CURRENT_CHECK: ContextVar[str | None] = ContextVar("lorasetup_current_check", default=None)


class Abandoned(Exception):
    """Shared work a check waited on when the runner gave up on it; later askers get this at once."""


class Context:
    """What checks see: `target`, plus `memo`/`probe` caches that live for one run.

    Results of expensive work (a parsed file, an AST scan, a probe of the training interpreter) are
    computed once per run and shared by every check that asks, including from background threads.
    """

    def __init__(self, target: Target, verbose: bool = False, pip_args: list[str] | None = None,
                 all_pins: bool = False, fresh: bool | None = None) -> None:
        self.target = target
        self.verbose = verbose
        # `--fresh` (or LORASETUP_FRESH=1 under pytest): ask the training interpreter anew, not the warm cache
        self.fresh = os.environ.get("LORASETUP_FRESH", "") not in ("", "0") if fresh is None else fresh
        self.notes: list[str] = []  # what the run decided on the way (cache hits and misses), shown by -v
        self.pip_args = list(pip_args or [])  # passed through to every `pip install` a fix runs
        self.all_pins = all_pins  # `bootstrap --all-pins`: every pin of the checkout counts, not only the run's
        self.planned: set[str] | None = None  # ids of the checks this run will compute (None: not known)
        self._futures: dict[str, Future] = {}
        self._procs: dict[str, set[subprocess.Popen]] = {}  # memo key -> processes its work started
        self._waits: dict[str, set[str]] = {}  # check id -> memo keys it asked for
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lorasetup")

    def memo(self, key: str, fn: Callable[[], T]) -> T:
        """Compute `fn()` once per run under `key`; exceptions are cached and re-raised too."""
        check = CURRENT_CHECK.get()
        with self._lock:
            found = self._futures.get(key)
            future: Future = Future() if found is None else found
            if found is None:
                self._futures[key] = future
            if check is not None:
                self._waits.setdefault(check, set()).add(key)
        if found is None:
            try:
                future.set_result(self._tracking(key, fn))
            except BaseException as exc:  # noqa: BLE001 - cached and re-raised to every caller
                future.set_exception(exc)
        return future.result()

    def note(self, text: str) -> None:
        """Record a decision of this run for `-v` (thread-safe: probes run in the background)."""
        with self._lock:
            self.notes.append(text)

    def prefetch(self, key: str, fn: Callable[[], Any]) -> None:
        """Start `fn` in the background; a later `memo(key, ...)` waits for it instead of recomputing."""
        with self._lock:
            if key in self._futures:
                return
            self._futures[key] = self._pool.submit(self._tracking, key, fn)

    def probe(self, key: str, program: Path, params: Mapping[str, Any] | None = None, timeout: float = 60.0,
              env: Mapping[str, str] | None = None, background: bool = False) -> dict[str, Any] | None:
        """Run a probe program in the training interpreter once per run (see lorasetup.engine.probe)."""
        def call() -> dict[str, Any]:
            return run_program(self.target.python_exe, program, params, timeout=timeout, env=env)
        if background:
            self.prefetch(f"probe:{key}", call)
            return None
        return self.memo(f"probe:{key}", call)

    def _tracking(self, key: str, fn: Callable[[], T]) -> T:
        """Run `fn` with the processes it starts filed under `key`."""
        def register(proc: subprocess.Popen) -> Callable[[], None]:
            with self._lock:
                self._procs.setdefault(key, set()).add(proc)
            return lambda: self._forget(key, proc)
        with tracked(register):
            return fn()

    def _forget(self, key: str, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.get(key, set()).discard(proc)

    def abandon(self, check_id: str, reason: str) -> None:
        """The runner gave up on `check_id`: the unfinished work it waited on fails at once for later askers
        (with `reason`), and the processes that work started are stopped."""
        with self._lock:
            stuck = [k for k in self._waits.pop(check_id, set()) if not self._futures[k].done()]
            for key in stuck:
                failed: Future = Future()
                failed.set_exception(Abandoned(f"{key}: {reason}"))
                self._futures[key] = failed
            procs = [p for key in stuck for p in self._procs.pop(key, set())]
        for proc in procs:
            stop(proc, reason)

    def close(self) -> None:
        """End the run: queued work is cancelled, processes still running are stopped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            procs = [p for group in self._procs.values() for p in group]
            self._procs.clear()
        for proc in procs:
            stop(proc, "the run ended")

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
