"""The checkout's pins for this machine, judged against what the training interpreter has installed."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion

from lorasetup.checks.deps.requirements import Pin, RequirementSet, checkout_files, parse_files
from lorasetup.checks.deps.venv import env
from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed


def requirement_set(ctx: Context) -> RequirementSet | None:
    """The checkout's requirement files for this machine (None when it has none)."""
    def compute() -> RequirementSet | None:
        markers = env(ctx)["markers"]
        layout = ctx.target.layout
        base = ctx.target.kohya_root if layout == "kohya_ss" else ctx.target.sd_scripts
        if base is None:
            return None
        files = checkout_files(base, layout, markers["sys_platform"], markers["platform_machine"])
        try:
            return parse_files(files, markers) if files else None
        except OSError as exc:
            raise CheckFailed(f"cannot read {exc.filename}: {exc.strerror}",
                              hint=f"check the file's permissions: `ls -l {exc.filename}`") from None
    return ctx.memo("deps:requirements", compute)



@dataclass
@dataclass
class Skew:
    """A requirement line the installed distributions do not satisfy."""

    pin: Pin
    installed: str | None

    def describe(self) -> str:
        have = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.pin.req.name}: {have}; {self.pin.place} wants {self.pin.spec}"



def version_skews(ctx: Context) -> list[Skew]:
    reqs = requirement_set(ctx)
    if reqs is None:
        return []
    dists = env(ctx)["dists"]
    skews = []
    for pin in reqs.pins:
        have = dists.get(pin.name)
        try:
            fine = have is not None and pin.allows(have["version"])
        except InvalidVersion:
            fine = False
        if not fine:
            skews.append(Skew(pin, have["version"] if have else None))
    return skews

