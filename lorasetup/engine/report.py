"""Text and JSON renderings of one list of results."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from lorasetup.engine.result import Result, Status
from lorasetup.engine.target import Target

SCHEMA_VERSION = 1
MARKS = {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.SKIP: "-", Status.ERROR: "E"}
COLORS = {Status.OK: "32", Status.WARN: "33", Status.FAIL: "31", Status.SKIP: "2", Status.ERROR: "35"}


def use_color(stream: IO[str]) -> bool:
    """Color only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def render_result(result: Result, verbose: bool = False, color: bool = False,
                  shown_hints: set[str] | None = None) -> str:
    """One check: a marked line, then details, hint and fix indented below it. A skip's hint that was
    already printed for an earlier check (`shown_hints`) is not repeated."""
    mark = MARKS[result.status]
    head = f"{mark} {result.check_id:<20} {result.summary}"
    if verbose:
        head += f"  ({result.duration_s:.2f} s)"
    if color:
        head = f"\033[{COLORS[result.status]}m{head}\033[0m"
    lines = [head]
    show_details = verbose or result.status in (Status.WARN, Status.FAIL, Status.ERROR)
    if show_details:
        lines += [f"    {d}" for line in result.details for d in line.splitlines()]
    repeated = shown_hints is not None and result.status is Status.SKIP and result.hint in shown_hints
    if result.hint and result.status is not Status.OK and not repeated:
        lines.append(f"    hint: {result.hint}")
        if shown_hints is not None:
            shown_hints.add(result.hint)
    if result.fix and result.status is not Status.OK:
        safety = "safe" if result.fix.safe else "needs --yes"
        lines.append(f"    fix ({safety}): {result.fix.description}")
        lines += [f"      $ {cmd}" for cmd in result.fix.commands]
    if verbose and result.traceback:
        lines += [f"    | {t}" for t in result.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def counts(results: Iterable[Result]) -> dict[str, int]:
    out = {s.value: 0 for s in Status}
    for r in results:
        out[r.status.value] += 1
    return out


def summary_line(results: list[Result], elapsed_s: float | None = None) -> str:
    """`12 ok, 1 warn, 1 fail, 2 skip, 0 error in 0.84 s`."""
    line = ", ".join(f"{n} {s}" for s, n in counts(results).items())
    return line + (f" in {elapsed_s:.2f} s" if elapsed_s is not None else "")


def to_json(target: Target, results: list[Result], **extra: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "target": target.to_dict(),
            "results": [r.to_dict() for r in results], "summary": counts(results), **extra}


def exit_code(results: Iterable[Result], strict: bool = False) -> int:
    """0 when nothing failed or errored (warnings allowed unless strict), else 1."""
    bad = {Status.FAIL, Status.ERROR} | ({Status.WARN} if strict else set())
    return 1 if any(r.status in bad for r in results) else 0


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
