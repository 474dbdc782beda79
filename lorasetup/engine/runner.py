"""Run checks in dependency order: blocked dependents skip, crashes become `error`, everything is timed, and
no check runs past its deadline.

Deadlines work as pytest-timeout's do under pytest: each check runs in its own thread; when it has not answered
within its `timeout_s` (or before the whole run's deadline, `--timeout`), it becomes an `error` result "did not
answer in N s", the processes its work started are killed, and the run goes on with the next check.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lorasetup.engine.context import CURRENT_CHECK, Abandoned, Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import Check, CheckFailed, Result, Status


@dataclass(frozen=True)
class Deadline:
    """The whole run's time limit (`--timeout`): `seconds` from when it was started."""

    seconds: float
    at: float

    @classmethod
    def start(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return self.at - time.monotonic()


def select(checks: list[Check], only: Iterable[str] = (), skip: Iterable[str] = (),
           tags: Iterable[str] = ("preflight",)) -> list[Check]:
    """Checks named by `only` (ids or whole gates), else those carrying any of `tags`; minus `skip`."""
    only, skip, tags = set(only), set(skip), set(tags)
    known = {c.id for c in checks} | {c.gate for c in checks}
    unknown = sorted((only | skip) - known)
    if unknown:
        raise ValueError(f"unknown check id(s): {', '.join(unknown)}; see `lorasetup list-checks`")

    def named(c: Check, names: set[str]) -> bool:
        return c.id in names or c.gate in names
    chosen = [c for c in checks if named(c, only)] if only else [c for c in checks if c.tags & tags]
    return [c for c in chosen if not named(c, skip)]


class Runner:
    """Computes each check's result once, requirements first."""

    def __init__(self, ctx: Context, checks: list[Check], deadline: Deadline | None = None) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.checks = {c.id: c for c in checks}
        self.results: dict[str, Result] = {}
        self.gating: list[str] = []  # preflight checks of this run: a failure among them blocks smoke checks

    def order(self, wanted: Iterable[Check]) -> list[Check]:
        """`wanted` plus their requirements (when registered and not skipped), requirements first."""
        seen: dict[str, Check] = {}

        def visit(c: Check) -> None:
            if c.id in seen:
                return
            for req in c.requires:
                if req in self.checks:
                    visit(self.checks[req])
            seen[c.id] = c
        for c in wanted:
            visit(c)
        return list(seen.values())

    def plan(self, ordered: list[Check]) -> None:
        """Announce the run: which checks it computes (so shared probes do only what they need), which
        preflight checks gate the smoke checks; then start the slow work in the background."""
        self.ctx.planned = {c.id for c in ordered}
        self.gating = [c.id for c in ordered if "preflight" in c.tags]
        self.start_prefetch(ordered)

    def start_prefetch(self, checks: Iterable[Check]) -> None:
        """Start slow work (probes of the training interpreter) in the background."""
        for c in checks:
            if c.prefetch is not None:
                try:
                    c.prefetch(self.ctx)
                except Exception:  # noqa: BLE001 - the check itself will report the problem
                    pass

    def run(self, wanted: Iterable[Check], on_result: Callable[[Result], None] | None = None,
            on_start: Callable[[Check], None] | None = None, fast_first: bool = False,
            stop: Callable[[Result], bool] | None = None) -> list[Result]:
        """Run `wanted` and their requirements; `on_start` sees each check as it starts, `on_result` each
        result as soon as it is known. `fast_first` computes the checks that ask the training interpreter
        last (their probes run in the background meanwhile), so static findings arrive in milliseconds;
        `stop` ends the run after the first result it accepts (`-x`). The results come back in dependency
        (registry) order either way, without the checks a stop left out."""
        ordered = self.order(wanted)
        self.plan(ordered)
        for c in self.fast_first(ordered) if fast_first else ordered:
            if on_start is not None:
                on_start(c)
            result = self.result(c.id)
            if on_result is not None:
                on_result(result)
            if stop is not None and stop(result):
                break
        return [self.results[c.id] for c in ordered if c.id in self.results]

    def fast_first(self, ordered: list[Check]) -> list[Check]:
        """`ordered` in three bands: checks with no background work, then those that wait for a prefetch (a
        short probe, image headers), then every check that waits on a probe of the training stack (itself or
        through a requirement). Requirements still come before their dependents: a requirement's band passes
        on to them."""
        band: dict[str, int] = {}
        for c in ordered:
            own = 2 if "probe" in c.tags else 1 if c.prefetch is not None else 0
            band[c.id] = max([own, *(band.get(req, 0) for req in c.requires)])
        return sorted(ordered, key=lambda c: band[c.id])

    def result(self, check_id: str) -> Result:
        """The check's result, computing its requirements first. A smoke check also waits for the
        preflight checks of the run: minutes of training on a setup already known to fail are wasted."""
        if check_id not in self.results:
            c = self.checks[check_id]
            gates = [g for g in self.gating if g != check_id] if "smoke" in c.tags else []
            failed = [g for g in gates if self.result(g).status in (Status.FAIL, Status.ERROR)]
            if failed:
                self.results[check_id] = Result.skip(
                    f"blocked by failing preflight checks: {', '.join(failed)}",
                    hint="fix those first (`lorasetup doctor`), then run the smoke run").with_meta(c, 0.0)
                return self.results[check_id]
            for req in c.requires:
                if req in self.checks and self.result(req).status.blocking:
                    blocked = self.result(req)
                    self.results[check_id] = Result.skip(
                        f"blocked by {req} ({blocked.status.value})").with_meta(c, 0.0)
                    break
            else:
                self.results[check_id] = self.run_timed(c)
        return self.results[check_id]

    def run_timed(self, c: Check) -> Result:
        """run_one in a thread of its own, given up on after the check's time limit or the run's deadline."""
        limit = c.timeout_for(self.ctx.target)
        if self.deadline is not None:
            if self.deadline.left() <= 0:
                return Result(Status.ERROR, f"not run: the run's --timeout of {self.deadline.seconds:g} s was "
                              "used up", hint="raise --timeout, or run fewer checks (--only/--skip)").with_meta(c, 0)
            limit = min(limit, self.deadline.left())
        answer: list[Result] = []

        def work() -> None:
            CURRENT_CHECK.set(c.id)
            answer.append(run_one(self.ctx, c))
        worker = threading.Thread(target=work, name=f"lorasetup-check-{c.id}", daemon=True)
        start = time.perf_counter()
        worker.start()
        worker.join(limit)
        if answer:
            return answer[0]
        cut = self.deadline is not None and limit < c.timeout_for(self.ctx.target)
        why = (f"before the run's --timeout of {self.deadline.seconds:g} s ran out" if cut and self.deadline
               else f"in {limit:g} s (its time limit)")
        self.ctx.abandon(c.id, f"{c.id} did not answer {why}")
        return Result(Status.ERROR, f"{c.id} did not answer {why}; the processes it started were stopped and "
                      "the run went on", hint="run it alone with -v to see where it waits (`lorasetup doctor "
                      f"--only {c.id} -v`); a slow disk, a hung network mount or a hung training interpreter?"
                      ).with_meta(c, time.perf_counter() - start)


def run_one(ctx: Context, c: Check) -> Result:
    """Run one check; a CheckFailed is a `fail`, a ProbeError or any other exception an `error`."""
    start = time.perf_counter()
    try:
        result = c.func(ctx)
        if not isinstance(result, Result):
            raise TypeError(f"check {c.id} returned {type(result).__name__}, not Result")
    except CheckFailed as exc:
        result = Result.fail(exc.summary, exc.details, hint=exc.hint)
    except Abandoned as exc:
        result = Result(Status.ERROR, f"did not answer: it waits for work that was given up: {exc}",
                        hint="see the check named above: it did not answer in time")
    except ProbeError as exc:
        result = Result(Status.ERROR, str(exc).splitlines()[0], str(exc).splitlines()[1:],
                        hint="run the command with -v to see the whole output of the training interpreter",
                        traceback=exc.output)
    except Exception as exc:  # noqa: BLE001 - a crashing check must not crash the doctor
        result = Result(Status.ERROR, f"the check itself crashed: {type(exc).__name__}: {exc}",
                        hint="this is a lorasetup bug; run with -v and report the traceback",
                        traceback=traceback.format_exc())
    return result.with_meta(c, time.perf_counter() - start)
