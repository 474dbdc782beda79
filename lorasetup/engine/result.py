"""The small data model shared by the CLI and the pytest gates: Status, Result, Fix, Check."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lorasetup.engine.errors import CheckFailed as CheckFailed
from lorasetup.engine.errors import FixError as FixError

if TYPE_CHECKING:
    from lorasetup.engine.context import Context
    from lorasetup.engine.target import Target


class Status(str, enum.Enum):
    """Outcome of one check. `error` means the check itself crashed."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"

    @property
    def blocking(self) -> bool:
        """True when dependents of a check with this status cannot run."""
        return self in (Status.FAIL, Status.ERROR, Status.SKIP)


@dataclass
class Fix:
    """A repair a check offers. `commands` is what `--dry-run` shows; `apply` does it."""

    description: str
    commands: list[str]
    apply: Callable[[], None]
    safe: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "commands": list(self.commands), "safe": self.safe}


@dataclass
class Result:
    """What one check found. `check_id`, `title` and `duration_s` are filled in by the runner."""

    status: Status
    summary: str
    details: list[str] = field(default_factory=list)
    hint: str | None = None
    fix: Fix | None = None
    data: dict[str, Any] = field(default_factory=dict)
    check_id: str = ""
    title: str = ""
    duration_s: float = 0.0
    traceback: str | None = None

    @classmethod
    def ok(cls, summary: str, details: list[str] | None = None, **kw: Any) -> Result:
        return cls(Status.OK, summary, details or [], **kw)

    @classmethod
    def warn(cls, summary: str, details: list[str] | None = None, **kw: Any) -> Result:
        return cls(Status.WARN, summary, details or [], **kw)

    @classmethod
    def fail(cls, summary: str, details: list[str] | None = None, **kw: Any) -> Result:
        return cls(Status.FAIL, summary, details or [], **kw)

    @classmethod
    def skip(cls, summary: str, details: list[str] | None = None, **kw: Any) -> Result:
        return cls(Status.SKIP, summary, details or [], **kw)

    def with_meta(self, check: Check, duration_s: float) -> Result:
        return replace(self, check_id=check.id, title=check.title, duration_s=duration_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.check_id,
            "title": self.title,
            "status": self.status.value,
            "summary": self.summary,
            "details": list(self.details),
            "hint": self.hint,
            "fix": self.fix.to_dict() if self.fix else None,
            "duration_s": round(self.duration_s, 4),
            "data": self.data,
        }


@dataclass(frozen=True)
class Check:
    """One named, stable check: `id` is `<gate>.<name>`; `tags` become pytest markers."""

    id: str
    title: str
    func: Callable[[Context], Result]
    tags: frozenset[str] = frozenset({"preflight"})
    requires: tuple[str, ...] = ()
    timeout_s: float = 120.0
    prefetch: Callable[[Context], None] | None = None
    fixes: str = ""  # what its fix repairs and how (`list-checks --fixes`); empty: it only reports
    timeout_from: Callable[[Target], float] | None = None  # a limit that depends on the target (the smoke run)

    @property
    def gate(self) -> str:
        return self.id.split(".", 1)[0]

    def timeout_for(self, target: Target) -> float:
        """How long the runner waits for this check on `target` before giving up on it."""
        return self.timeout_from(target) if self.timeout_from is not None else self.timeout_s
