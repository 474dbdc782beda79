"""What a pip fix left behind: after pip fails midway, some packages of the plan may be installed and others not;
the person needs to know which before running anything again."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from lorasetup.engine.probe import ProbeError, run_program
from lorasetup.sd.programs import program


def installed_now(python: Path, specs: Iterable[str]) -> str:
    """One line per requirement of the plan: the version installed in `python` now, and whether it meets the pin."""
    reqs = []
    for spec in specs:
        try:
            reqs.append(Requirement(spec))
        except InvalidRequirement:
            continue
    if not reqs:
        return ""
    try:  # the venv program lists every distribution under its canonical name
        dists = run_program(python, program("venv"), timeout=60).get("dists", {})
    except ProbeError as exc:
        return f"what is installed now could not be read: {str(exc).splitlines()[0]}"
    lines = [f"{req}: {_state(req, (dists.get(canonicalize_name(req.name)) or {}).get('version'))}" for req in reqs]
    return f"installed now in {python}:\n" + "\n".join(f"  {line}" for line in lines)


def _state(req: Requirement, version: str | None) -> str:
    if version is None:
        return "missing"
    try:
        meets = req.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        meets = False
    return f"{version} installed" + ("" if meets else f" (not the pin {req.specifier})")
