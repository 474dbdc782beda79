"""Text and JSON renderings of one list of results."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable
from typing import IO, Any

from lorasetup.engine.result import Check, Result, Status
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


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LiveBlock:
    """A doctor run on a terminal: one line per planned check in gate order, each placeholder replaced by its
    result the moment it is known, so the first failure is on screen at once and the block settles into gate
    order. Off a terminal, or when the block outgrows the window, results are printed as they arrive."""

    def __init__(self, stream: IO[str], checks: list[Check], verbose: bool, color: bool) -> None:
        self.stream, self.checks, self.verbose, self.color = stream, checks, verbose, color
        self.results: dict[str, Result] = {}
        self.drawn = 0  # terminal rows of the last drawing
        self.appending = not (hasattr(stream, "isatty") and stream.isatty())
        self.hints: set[str] = set()

    def _text(self) -> str:
        hints: set[str] = set()
        lines = []
        for c in self.checks:
            result = self.results.get(c.id)
            lines.append(render_result(result, self.verbose, self.color, shown_hints=hints) if result
                         else f"… {c.id:<20} {c.title}")
        return "\n".join(lines)

    def _rows(self, text: str) -> int:
        width = max(shutil.get_terminal_size().columns, 20)
        return sum(max(1, -(-len(ANSI.sub("", line)) // width)) for line in text.split("\n"))

    def draw(self) -> None:
        if self.appending:
            return
        text = self._text()
        rows = self._rows(text)
        if rows >= shutil.get_terminal_size().lines - 1:  # too tall to redraw in place: print as they come
            self.appending = True
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "")
            for c in self.checks:
                if c.id in self.results:
                    self.stream.write(render_result(self.results[c.id], self.verbose, self.color,
                                                    shown_hints=self.hints) + "\n")
            self.stream.flush()
            return
        self.stream.write((f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "") + text + "\n")
        self.stream.flush()
        self.drawn = rows

    def add(self, result: Result) -> None:
        self.results[result.check_id] = result
        if self.appending:
            self.stream.write(render_result(result, self.verbose, self.color, shown_hints=self.hints) + "\n")
            self.stream.flush()
        else:
            self.draw()

    def finish(self) -> None:
        """Leave only what ran: checks a stop (`-x`) left out lose their placeholder."""
        self.checks = [c for c in self.checks if c.id in self.results]
        self.draw()
