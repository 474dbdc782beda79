"""The checkout's pins for this machine, each judged for THIS run.

A pin is classified by the import scan (lorasetup.sd.imports), not by a list of names:

- run: a module the run imports (the entry script's closure and the modules its arguments name);
- sd-scripts: a module sd-scripts imports elsewhere (its other scripts, other options);
- none: no sd-scripts script imports it (the GUI, captioning tools, logging and tooling extras).

Import names are matched to distributions in the training interpreter: the top-level names each installed
distribution provides (top_level.txt, else its RECORD: importlib.metadata.packages_distributions' rule); for
one not installed, its own name (`lion-pytorch` is `lion_pytorch`) or lorasetup's module table (`cv2`).

Then each pin is met, unmet, accepted (`[deps] accept` in lorasetup.toml), or a build for another device
(`torch==2.7.0+cu128` on a CPU machine: compared by its release only, and never a failure here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from lorasetup.checks.deps.requirements import Machine, Pin, RequirementSet, checkout_files, parse_files
from lorasetup.checks.deps.venv import env
from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed
from lorasetup.sd.facts import MODULE_TO_DIST
from lorasetup.sd.imports import closure, resolve, tree_imports

RUN, ELSEWHERE, UNUSED = "run", "sd-scripts", "none"
MET, UNMET, ACCEPTED, OTHER_BUILD = "met", "unmet", "accepted", "other build"
BUILD_NAMES = {"cuda": "CUDA", "rocm": "ROCm", "xpu": "Intel XPU", "cpu": "CPU"}


def machine(ctx: Context) -> Machine:
    """What kohya_ss's setup would see on this machine (from the training interpreter's probe)."""
    found = env(ctx)
    facts: dict[str, Any] = found.get("machine") or {}
    return Machine(found["markers"]["sys_platform"], found["markers"]["platform_machine"],
                   nvidia_smi=bool(facts.get("nvidia_smi")), rocm=bool(facts.get("rocm")),
                   runpod=bool(facts.get("runpod")), xpu=ctx.target.device == "xpu")


def device_kind(ctx: Context) -> str:
    """The device this machine trains on, as a build names it: cuda, rocm, xpu, mps or cpu."""
    return device_of(machine(ctx), ctx.target.device)


def device_of(m: Machine, device: str) -> str:
    """cuda, rocm, xpu, mps or cpu from the machine's tools and the configured device (ROCm torch calls
    its device cuda, so `cuda` on a machine with rocminfo and no nvidia-smi is rocm)."""
    if device in ("mps", "xpu", "cpu"):
        return device
    if m.rocm and not m.nvidia_smi:
        return "rocm"
    if device == "cuda" or m.nvidia_smi:
        return "cuda"
    return "mps" if m.sys_platform.startswith("darwin") else "cpu"


def runs_here(build: str, here: str) -> bool:
    """A build for `build` is this device's own (macOS wheels, on PyTorch's CPU index, carry MPS)."""
    return build == here or (build == "cpu" and here == "mps")


def requirement_set(ctx: Context) -> RequirementSet | None:
    """The checkout's requirement files for this machine (None when it has none)."""
    def compute() -> RequirementSet | None:
        markers = env(ctx)["markers"]
        layout = ctx.target.layout
        base = ctx.target.kohya_root if layout == "kohya_ss" else ctx.target.sd_scripts
        if base is None:
            return None
        files, note = checkout_files(base, layout, machine(ctx))
        try:
            reqs = parse_files(files, markers) if files else None
        except OSError as exc:
            raise CheckFailed(f"cannot read {exc.filename}: {exc.strerror}",
                              hint=f"check the file's permissions: `ls -l {exc.filename}`") from None
        if reqs is not None:
            reqs.platform_note = note
        return reqs
    return ctx.memo("deps:requirements", compute)


@dataclass(frozen=True)
class Verdict:
    """One pin judged for this run."""

    pin: Pin
    installed: str | None
    use: str            # RUN, ELSEWHERE or UNUSED
    where: str          # the first place that imports it ("" when nothing does)
    state: str          # MET, UNMET, ACCEPTED or OTHER_BUILD
    install: str = ""   # what a fix installs: the pin's spec, or the accepted one
    note: str = ""

    def describe(self) -> str:
        have = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.pin.req.name}: {have}; {self.pin.place} wants {self.pin.spec}"

    def brief(self) -> str:
        """`gradio missing` or `numpy 2.4.6 (wants <2,>=1.26.0)`."""
        if self.installed is None:
            return f"{self.pin.req.name} missing"
        return f"{self.pin.req.name} {self.installed} (wants {self.pin.req.specifier})"


def accepted(ctx: Context) -> dict[str, Requirement]:
    """The deliberate deviations the configuration names (`[deps] accept`), by distribution."""
    out: dict[str, Requirement] = {}
    for text in ctx.target.deps_accept:
        req = Requirement(text)  # the Target loader already refused what does not parse
        out[canonicalize_name(req.name)] = req
    return out


def provides(pin: Pin, dists: dict[str, Any]) -> set[str]:
    """The top-level import names of a pin's distribution."""
    have = dists.get(pin.name)
    if have and have.get("top"):
        return set(have["top"])
    names = {pin.name.replace("-", "_")}  # canonical: lower case, `-` between words
    return names | {module.split(".")[0] for module, dist in MODULE_TO_DIST.items()
                    if canonicalize_name(dist) == pin.name}


def run_modules(ctx: Context) -> dict[str, str]:
    """Top-level modules the run imports, with the place: required, or guarded and present (then they run)."""
    found, resolution = closure(ctx), resolve(ctx)
    if found is None or resolution is None:
        return {}
    out: dict[str, str] = {}
    for top, uses in resolution.third_party(found).items():
        spec = resolution.specs.get(top)
        present = spec is not None and "error" not in spec
        use = next((u for u in uses if u.required or (u.guarded and not u.deferred and present)), None)
        if use is not None:
            out[top] = use.place
    return out


def _state(ctx: Context, reqs: RequirementSet, pin: Pin, installed: str | None, accept: Requirement | None
           ) -> tuple[str, str, str]:
    """(state, what a fix installs, note) of one pin."""
    if fits(pin.req.specifier, installed) or (pin.local_labels and fits(pin.release, installed)):
        return MET, "", ""
    if accept is not None and (not accept.specifier or fits(accept.specifier, installed)):
        return ACCEPTED, "", f"accepted by {ctx.target.sources.get('deps_accept', 'the configuration')}: {accept}"
    build, here = reqs.build_of(pin), device_kind(ctx)
    if build is not None and not runs_here(build, here):
        return OTHER_BUILD, "", (f"a {BUILD_NAMES[build]} build, for another device (this machine: {here}); "
                                 "not a failure here")
    return UNMET, str(accept) if accept is not None else pin.spec, ""


def fits(spec: SpecifierSet, version: str | None) -> bool:
    """An installed version meets a specifier (pre-releases allowed: pip installed them on purpose)."""
    if version is None:
        return False
    try:
        return spec.contains(version, prereleases=True)
    except InvalidVersion:
        return False


def judge(ctx: Context) -> list[Verdict]:
    """Every applicable pin of the checkout, classified and judged (memoized)."""
    def compute() -> list[Verdict]:
        reqs = requirement_set(ctx)
        if reqs is None:
            return []
        dists, runs, accepts = env(ctx)["dists"], run_modules(ctx), accepted(ctx)
        out = []
        for pin in reqs.pins:
            have = dists.get(pin.name)
            installed = have["version"] if have else None
            state, install, note = _state(ctx, reqs, pin, installed, accepts.get(pin.name))
            tops = provides(pin, dists)
            use, where = _use(ctx, tops, runs, deep=state == UNMET)
            out.append(Verdict(pin, installed, use, where, state, install, note))
        return out
    return ctx.memo("deps:judged", compute)


def _use(ctx: Context, tops: set[str], runs: dict[str, str], deep: bool) -> tuple[str, str]:
    """RUN, ELSEWHERE or UNUSED, and the place; the whole-tree scan only for an unmet pin (`deep`)."""
    hit = sorted(tops & runs.keys())
    if hit:
        return RUN, runs[hit[0]]
    if not deep:
        return UNUSED, ""
    anywhere = tree_imports(ctx)
    hit = sorted(tops & anywhere.keys())
    return (ELSEWHERE, anywhere[hit[0]]) if hit else (UNUSED, "")


def unused_accepts(ctx: Context) -> list[str]:
    """`[deps] accept` entries that name no pin of the checkout (a typo, or a stale entry)."""
    reqs = requirement_set(ctx)
    pinned = {p.name for p in reqs.pins} if reqs else set()
    return [str(req) for name, req in accepted(ctx).items() if name not in pinned]
