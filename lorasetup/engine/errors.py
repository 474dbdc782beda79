"""The two exceptions checks and fixes raise on purpose, at the bottom of the engine so that every module (the
guarded file reader included) can raise them without importing the result model."""

from __future__ import annotations


class CheckFailed(Exception):
    """Raised inside a check for bad input (an unreadable file, say): becomes a `fail` result, not `error`."""

    def __init__(self, summary: str, hint: str | None = None, details: list[str] | None = None) -> None:
        super().__init__(summary)
        self.summary, self.hint, self.details = summary, hint, details or []


class FixError(Exception):
    """A fix could not be applied; the message is shown as is (e.g. pip's own error line)."""
