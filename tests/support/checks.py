"""Run checks in a test the way `lorasetup doctor --only ...` does: one helper instead of a Target -> Context ->
Runner chain in every test module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.result import Check, Result
from lorasetup.engine.runner import Runner, select
from lorasetup.engine.target import Target


def gate_checks(gate: str) -> list[Check]:
    """The registered checks of one gate, in registry order."""
    return [c for c in all_checks() if c.gate == gate]


def run_checks(target: Target, only: Iterable[str] = (), *, registry: Sequence[Check] | None = None,
               answers: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Result]:
    """Results by check id, in the order they ran, of a fresh run on `target` (its Context closed after).

    `only`: check ids or gates to run, their requirements first (default: every check of the registry).
    `registry`: the checks this run knows (default: all of them); a requirement outside it is not run, so a
    gate's own list keeps the other gates out. `answers`: memo keys set before the run (a recorded probe answer
    stands in for the training interpreter's). `options`: the Context's own (pip_args, all_pins)."""
    checks = list(all_checks() if registry is None else registry)
    wanted = select(checks, only=only) if only else checks
    with Context(target, **options) as ctx:
        for key, value in (answers or {}).items():
            ctx.memo(key, lambda value=value: value)
        return {r.check_id: r for r in Runner(ctx, checks).run(wanted)}
