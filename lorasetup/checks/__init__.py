"""The check registry. Each gate module registers its checks with `@check(...)`.

Gates, in run order: repo, deps, device, dataset, args, model, smoke. A check id is `<gate>.<name>`
and never changes once published.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from lorasetup.engine.result import Check, Result

GATES = ("repo", "deps", "device", "dataset", "args", "model", "smoke")
MARKERS = {
    "preflight": "static checks before a run (seconds)",
    "probe": "asks the training interpreter (imports torch there)",
    "smoke": "a real short training run with finite loss",
}
_REGISTRY: dict[str, Check] = {}


def check(check_id: str, title: str, *, tags: Iterable[str] = ("preflight",), requires: Iterable[str] = (),
          timeout_s: float = 120.0, prefetch: Callable | None = None, fixes: str = "",
          timeout_from: Callable | None = None) -> Callable:
    """Register the decorated `func(ctx) -> Result` as a check."""
    gate = check_id.split(".", 1)[0]
    if gate not in GATES or "." not in check_id:
        raise ValueError(f"check id {check_id!r} must be <gate>.<name> with gate in {GATES}")
    unknown = set(tags) - set(MARKERS)
    if unknown:
        raise ValueError(f"check {check_id}: unknown tags {sorted(unknown)}; add them to MARKERS")

    def register(func: Callable) -> Callable:
        if check_id in _REGISTRY:
            raise ValueError(f"duplicate check id {check_id}")
        _REGISTRY[check_id] = Check(check_id, title, func, frozenset(tags), tuple(requires), timeout_s, prefetch,
                                    fixes, timeout_from)
        return func
    return register


def all_checks() -> list[Check]:
    """Every registered check, gate by gate in run order, in registration order within a gate."""
    for gate in GATES:
        importlib.import_module(f"lorasetup.checks.{gate}.checks")
    order = {gate: i for i, gate in enumerate(GATES)}
    return sorted(_REGISTRY.values(), key=lambda c: order[c.gate])


def by_id() -> dict[str, Check]:
    return {c.id: c for c in all_checks()}


__all__ = ["GATES", "MARKERS", "Result", "all_checks", "by_id", "check"]
