"""Plan, apply, re-check: the engine behind `lorasetup bootstrap`.

Each round applies the fixes of the failing checks (safe ones; unsafe ones only with `yes`), then re-runs
each fixed check and everything that depends on it in a fresh context. Checks that were blocked before may
now run and offer fixes of their own, so up to MAX_ROUNDS rounds are made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorasetup.engine.context import Context
from lorasetup.engine.result import Check, FixError, Result, Status
from lorasetup.engine.runner import Deadline, Runner

MAX_ROUNDS = 3
FAILING = (Status.FAIL, Status.ERROR)


@dataclass
class Outcome:
    """What happened to one fix: planned, fixed, still failing, fix failed, or needs you."""

    check_id: str
    description: str
    commands: list[str]
    safe: bool
    state: str
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"id": self.check_id, "description": self.description, "commands": self.commands,
                "safe": self.safe, "outcome": self.state, "message": self.message}


def dependents(checks: list[Check], ids: set[str]) -> set[str]:
    """`ids` and every check that requires one of them, transitively."""
    out = set(ids)
    changed = True
    while changed:
        changed = False
        for c in checks:
            if c.id not in out and out.intersection(c.requires):
                out.add(c.id)
                changed = True
    return out


def bootstrap(new_context: Callable[[], Context], checks: list[Check], selected: list[Check], *,
              apply: bool, yes: bool, deadline: Deadline | None = None) -> tuple[list[Result], list[Outcome]]:
    """Run the selected checks, fix what may be fixed, re-check; return final results and outcomes. With a
    `deadline`, checks still running when it passes end as errors and no further fix round starts."""
    with new_context() as ctx:
        results = {r.check_id: r for r in Runner(ctx, checks, deadline).run(selected)}
    outcomes: dict[str, Outcome] = {}
    for _ in range(MAX_ROUNDS if apply else 1):
        todo = [r for r in results.values() if r.status in FAILING and r.fix and r.check_id not in outcomes]
        for r in todo:
            assert r.fix is not None
            outcomes[r.check_id] = Outcome(r.check_id, r.fix.description, list(r.fix.commands), r.fix.safe,
                                           "planned" if r.fix.safe or yes else "needs --yes")
        in_time = deadline is None or deadline.left() > 0
        applied = apply_fixes(todo, outcomes) if apply and in_time else set()
        if not applied:
            break
        with new_context() as ctx:
            recheck = dependents(checks, applied)
            rerun = Runner(ctx, checks, deadline).run([c for c in checks if c.id in recheck])
            results.update({r.check_id: r for r in rerun})
        for check_id in applied:
            after = results[check_id]
            outcomes[check_id].state = "fixed" if after.status in (Status.OK, Status.WARN) else "still failing"
            if outcomes[check_id].state == "still failing":
                outcomes[check_id].message = after.summary
    order = {c.id: i for i, c in enumerate(checks)}
    return sorted(results.values(), key=lambda r: order[r.check_id]), list(outcomes.values())


def apply_fixes(todo: list[Result], outcomes: dict[str, Outcome]) -> set[str]:
    """Apply each planned fix; a plan shared by several checks (the same commands) runs once. Returns the ids
    of the checks whose fix applied."""
    applied: set[str] = set()
    ran: dict[tuple[str, ...], str | None] = {}  # commands -> None, or the error of their one run
    for r in todo:
        outcome = outcomes[r.check_id]
        if outcome.state != "planned" or r.fix is None:
            continue
        key = tuple(outcome.commands)
        if key not in ran:
            try:
                r.fix.apply()
                ran[key] = None
            except FixError as exc:
                ran[key] = str(exc)
        if ran[key] is None:
            applied.add(r.check_id)
        else:
            outcome.state, outcome.message = "fix failed", ran[key] or ""
    return applied


def needs_you(results: list[Result], outcomes: list[Outcome]) -> list[Result]:
    """Failing checks the person must act on (the hint says how): those that offer no automatic fix, and those
    whose fix ran but left something no fix can change (e.g. arguments after `--`)."""
    offered = {o.check_id: o for o in outcomes}
    return [r for r in results if r.status in FAILING and (
        r.check_id not in offered or (offered[r.check_id].state == "still failing" and r.fix is None))]
