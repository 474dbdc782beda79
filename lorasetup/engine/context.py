"""One run's shared state: the Target, memoized computations and probes, background prefetch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lorasetup.engine.probe import run_program
from lorasetup.engine.target import Target

T = TypeVar("T")


class Context:
    """What checks see: `target`, plus `memo`/`probe` caches that live for one run.

    Results of expensive work (a parsed file, an AST scan, a probe of the training interpreter) are
    computed once per run and shared by every check that asks, including from background threads.
    """

    def __init__(self, target: Target, verbose: bool = False, pip_args: list[str] | None = None,
                 all_pins: bool = False) -> None:
        self.target = target
        self.verbose = verbose
        self.pip_args = list(pip_args or [])  # passed through to every `pip install` a fix runs
        self.all_pins = all_pins  # `bootstrap --all-pins`: every pin of the checkout counts, not only the run's
        self.planned: set[str] | None = None  # ids of the checks this run will compute (None: not known)
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lorasetup")

    def memo(self, key: str, fn: Callable[[], T]) -> T:
        """Compute `fn()` once per run under `key`; exceptions are cached and re-raised too."""
        with self._lock:
            found = self._futures.get(key)
            future: Future = Future() if found is None else found
            if found is None:
                self._futures[key] = future
        if found is None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - cached and re-raised to every caller
                future.set_exception(exc)
        return future.result()

    def prefetch(self, key: str, fn: Callable[[], Any]) -> None:
        """Start `fn` in the background; a later `memo(key, ...)` waits for it instead of recomputing."""
        with self._lock:
            if key in self._futures:
                return
            self._futures[key] = self._pool.submit(fn)

    def probe(self, key: str, program: Path, params: Mapping[str, Any] | None = None, timeout: float = 60.0,
              env: Mapping[str, str] | None = None, background: bool = False) -> dict[str, Any] | None:
        """Run a probe program in the training interpreter once per run (see lorasetup.engine.probe)."""
        def call() -> dict[str, Any]:
            return run_program(self.target.python_exe, program, params, timeout=timeout, env=env)
        if background:
            self.prefetch(f"probe:{key}", call)
            return None
        return self.memo(f"probe:{key}", call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
