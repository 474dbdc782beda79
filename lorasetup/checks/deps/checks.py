"""The deps gate: the training interpreter, every import of the run, the checkout's pins, sd-scripts' own
`library` package, isolation from user and system packages, and a deep import of the stack.

Support code beside it: venv.py (the interpreter's own answer), requirements.py (the requirement files),
pins.py (each pin judged for this run), plan.py (the ONE pip plan that `bootstrap --fix` applies).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from lorasetup.checks import check
from lorasetup.checks.deps.pins import (
    ACCEPTED,
    ELSEWHERE,
    MET,
    OTHER_BUILD,
    RUN,
    UNMET,
    UNUSED,
    Verdict,
    judge,
    requirement_set,
    unused_accepts,
)
from lorasetup.checks.deps.plan import failing_pins, library_problem, missing_modules, with_plan
from lorasetup.checks.deps.requirements import RequirementSet
from lorasetup.checks.deps.venv import env, python_cmd, read_cfg, venv_config
from lorasetup.engine.context import Context
from lorasetup.engine.files import FileProblem, open_regular, read_toml
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import CheckFailed, Result
from lorasetup.sd.imports import ImportUse, closure, deep_targets, dist_for, resolve

DEFAULT_PYTHONS = ">=3.10,<3.13"  # sd-scripts README: Python 3.10; 3.11 and 3.12 "will work but not tested"


# ---------------------------------------------------------------- prefetch

def prefetch(ctx: Context) -> None:
    """Start the two small probes (environment, find_spec of the closure) in the background."""
    ctx.prefetch("deps:warm-env", lambda: env(ctx))
    ctx.prefetch("deps:warm-imports", lambda: resolve(ctx))


def prefetch_deep(ctx: Context) -> None:
    prefetch(ctx)
    from lorasetup.sd import stackprobe
    stackprobe.start(ctx)


# ---------------------------------------------------------------- checks

def supported_pythons(ctx: Context) -> tuple[SpecifierSet, str]:
    """The Python versions the checkout declares (pyproject.toml requires-python), else the default."""
    for root in dict.fromkeys(p for p in (ctx.target.kohya_root, ctx.target.sd_scripts) if p):
        pyproject = root / "pyproject.toml"
        try:
            declared = read_toml(pyproject).get("project", {}).get("requires-python")
        except FileProblem:
            continue
        if declared:
            try:
                return SpecifierSet(declared), f"{pyproject} requires-python"
            except InvalidSpecifier:
                continue
    return SpecifierSet(DEFAULT_PYTHONS), "the default range (sd-scripts' README: 3.10, 3.11 and 3.12 work)"


@check("deps.interpreter", "the training interpreter starts and its Python version is supported",
       requires=("repo.present",), prefetch=prefetch)
def interpreter(ctx: Context) -> Result:
    python = ctx.target.python_exe
    origin = f"python came from: {ctx.target.sources.get('python', 'default')}"
    cfg = venv_config(python)
    if cfg is not None:
        settings = read_cfg(cfg)
        home, base = settings.get("home"), settings.get("executable")
        gone = home if home and not Path(home).is_dir() else base if base and not Path(base).exists() else None
        if gone:
            return Result.fail(
                f"the venv at {cfg.parent} was built on {gone}, which no longer exists",
                [f"{cfg}: " + ", ".join(f"{k} = {settings[k]}" for k in ("home", "executable") if k in settings),
                 origin,
                 "its python is a link to an interpreter that was removed or upgraded (`No Python at ...`)"],
                hint=f"rebuild the venv (needs your consent: its packages are reinstalled): "
                     f"`python3.10 -m venv --clear {cfg.parent}`, then `lorasetup bootstrap --fix`")
    if not python.exists():
        return Result.fail(f"the training interpreter {python} does not exist", [origin],
                           hint="point --python at the venv's interpreter (e.g. <kohya_ss>/venv/bin/python), or "
                                "create it: `python3.10 -m venv venv`")
    try:
        info = env(ctx)["python"]
    except ProbeError as exc:
        lines = str(exc).splitlines()
        return Result.fail(f"the training interpreter {python} does not start", [*lines, origin],
                           hint="the run would die before sd-scripts starts; rebuild the venv with a working "
                                f"Python: `python3.10 -m venv --clear {python.parent.parent}`")
    wanted, source = supported_pythons(ctx)
    details = [f"{python} runs Python {info['version']} ({info['executable']})", origin,
               f"supported: {wanted} ({source})"]
    if cfg is not None:
        details.append(f"venv {cfg.parent}, home {read_cfg(cfg).get('home', '?')}")
    if not wanted.contains(info["version"], prereleases=True):
        return Result.fail(f"Python {info['version']} is outside the range this checkout supports ({wanted})",
                           details, hint="packages pinned for the supported versions may have no wheels or fail "
                                         "to import; rebuild the venv with a supported Python, e.g. "
                                         f"`python3.10 -m venv --clear {python.parent.parent}`, then "
                                         "`lorasetup bootstrap --fix`")
    return Result.ok(f"Python {info['version']} at {python}", details)


def where(uses: list[ImportUse]) -> str:
    more = f" (+{len(uses) - 1} more)" if len(uses) > 1 else ""
    return uses[0].place + more


@check("deps.imports", "every module the run imports resolves in the training interpreter",
       requires=("repo.present", "deps.interpreter"), prefetch=prefetch,
       fixes="one `pip install` of the checkout's pinned versions for the missing modules (safe); torch is never "
             "reinstalled: its command is printed")
def imports(ctx: Context) -> Result:
    required, optional, found = missing_modules(ctx)
    if found is None:
        raise CheckFailed(f"{ctx.target.script} not found in {ctx.target.sd_scripts}",
                          hint="fix --script or --kohya-root")
    resolution = resolve(ctx)
    assert resolution is not None
    third = resolution.third_party(found)
    needed = sorted(top for top, uses in third.items() if any(u.required for u in uses))
    reqs = requirement_set(ctx)
    details = []
    for miss in required:
        dist = dist_for(miss.module) or miss.module
        pin = reqs.find(dist) if reqs else None
        source = f"{pin.spec} ({pin.place})" if pin else f"{dist} (lorasetup's module table)" \
            if dist_for(miss.module) else "no requirement file pins it"
        error = f" [{miss.error}]" if miss.error else ""
        details.append(f"{miss.module}: imported at {where(miss.uses)} -> {source}{error}")
    for module, place in found.missing_first_party:
        details.append(f"{module}: imported at {place}, but the checkout has no such module")
    notes = [f"optional, not installed: {m.module} ({where(m.uses)}: the code falls back without it)"
             for m in optional] + [f"not scanned: {u}" for u in found.unreadable]
    broken = len(required) + len(found.missing_first_party)
    if broken:
        names = ", ".join([m.module for m in required] + [m for m, _ in found.missing_first_party])
        first = (required[0].module if required else found.missing_first_party[0][0])
        result = Result.fail(
            f"{broken} module(s) the run imports are missing: {names}", details + notes,
            hint=f"the run dies at startup with `ModuleNotFoundError: No module named '{first}'`, before "
                 "any training")
        return with_plan(ctx, result) if required else result
    return Result.ok(f"all {len(needed)} third-party modules the run imports resolve "
                     f"({len(found.modules)} files of the checkout scanned)",
                     [f"required: {', '.join(needed)}", *notes])


@check("deps.versions", "installed packages match the checkout's requirement files",
       requires=("repo.present", "deps.interpreter"), prefetch=prefetch,
       fixes="one `pip install` of the versions the checkout's requirement files pin (safe); torch is never "
             "reinstalled: its command is printed")
def versions(ctx: Context) -> Result:
    reqs = requirement_set(ctx)
    if reqs is None:
        return Result.warn(f"no requirements.txt in {ctx.target.kohya_root}: installed versions not compared",
                           hint="without the checkout's pins, version skew (e.g. `cannot import name "
                                "'cached_download'`) shows up only when the run starts")
    verdicts = judge(ctx)
    files = ", ".join(f.name for f in reqs.files)
    failing = failing_pins(ctx)
    others = [v for v in verdicts if v.state == UNMET and v not in failing]
    run_pins = ", ".join(v.pin.req.name for v in verdicts if v.use == RUN) or "none"
    notes = [*_other_pins(others), *_deviations(ctx, verdicts), f"pins of the modules this run imports: {run_pins}",
             *_file_notes(reqs)]
    if failing:
        summary = ", ".join(v.brief() for v in sorted(failing, key=lambda v: v.installed is not None))
        counted = len(reqs.pins) if ctx.all_pins else sum(v.use == RUN for v in verdicts)
        scope = f"requirements of {files}" if ctx.all_pins else f"pinned packages this run imports ({files})"
        grouped = [_grouped(ctx, others)] if others else []
        result = Result.fail(f"{len(failing)} of {counted} {scope} not met: {summary}",
                             [v.describe() for v in failing] + grouped + notes,
                             hint="a package missing or off its pin breaks the run at start or minutes in "
                                  "(`No module named ...`, `cannot import name 'cached_download'`, NumPy 1/2 "
                                  "errors, accelerate keyword errors)")
        return with_plan(ctx, result)
    if others:
        return Result.warn(_grouped(ctx, others), notes,
                           hint="nothing this run imports is affected; the GUI and sd-scripts' other scripts and "
                                "options need them: `lorasetup bootstrap --fix --all-pins`")
    if reqs.unreadable:  # the run itself never reads requirement files: worth a warning, not a failure
        return Result.warn(f"{reqs.unreadable[0]}: its pins are not compared", reqs.unreadable[1:] + notes,
                           hint="`pip install -r` cannot read it either; replace it with the checkout's own file "
                                "(`git checkout -- requirements.txt` in a git checkout)")
    deviated = sum(v.state != MET for v in verdicts)
    kept = f" ({deviated} by an accepted deviation or another device's build, see details)" if deviated else ""
    return Result.ok(f"all {len(reqs.pins)} requirements of {files} met{kept}", notes)


def _grouped(ctx: Context, others: list[Verdict]) -> str:
    """The one line for unmet pins of packages this run does not import."""
    owner = "kohya_ss's" if ctx.target.layout == "kohya_ss" else "sd-scripts'"
    names = ", ".join(v.pin.req.name for v in others)
    return (f"{owner} requirements also pin {len(others)} package(s) this run does not import, missing or off "
            f"their pins: {names}; `lorasetup bootstrap --fix --all-pins` installs them")


def _other_pins(others: list[Verdict]) -> list[str]:
    """Unmet pins this run does not import, by who does import them."""
    elsewhere = [f"{v.brief()} ({v.where})" for v in others if v.use == ELSEWHERE]
    unused = [v.brief() for v in others if v.use == UNUSED]
    return ([f"not imported by this run; sd-scripts imports them elsewhere (other scripts, other options): "
             f"{', '.join(elsewhere)}"] if elsewhere else []) + \
        ([f"imported by no sd-scripts script by name (the GUI's, captioning's and tooling's packages, or an "
          f"optimizer module you name in --optimizer_type): {', '.join(unused)}"] if unused else [])


def _deviations(ctx: Context, verdicts: list[Verdict]) -> list[str]:
    """Pins not met on purpose: accepted in the configuration, or a build for another device."""
    notes = [f"accepted: {v.describe()}; {v.note}" for v in verdicts if v.state == ACCEPTED]
    notes += [f"not compared: {v.describe()}: {v.note}" for v in verdicts if v.state == OTHER_BUILD]
    notes += [f"[deps] accept names {text}, which no requirement file here pins" for text in unused_accepts(ctx)]
    return notes


def _file_notes(reqs: RequirementSet) -> list[str]:
    notes = [reqs.platform_note] if reqs.platform_note else []
    notes += [f"not checked: {u.place} `{u.text}`: {u.reason}" for u in reqs.unchecked]
    notes += [f"not checked here: {u.place} `{u.text}` ({u.reason}; see deps.library)" for u in reqs.editables]
    notes += [f"not for this machine: {p.place} `{p.req}`" for p in reqs.excluded]
    return notes


@check("deps.library", "sd-scripts' own `library` package is installed from this checkout",
       requires=("repo.present", "deps.interpreter"), prefetch=prefetch,
       fixes="`pip install --no-deps -e` of this checkout, sd-scripts' own `library` package (safe)")
def library(ctx: Context) -> Result:
    problem = library_problem(ctx)
    tree = ctx.target.sd_scripts
    assert tree is not None  # repo.present passed
    if problem is None:
        return Result.ok(f"`library` resolves to {tree / 'library'}")
    dist = env(ctx)["dists"].get("library")
    details = [problem] + ([f"installed distribution library {dist['version']} at {dist['path']}"
                            + (f", {dist['direct_url']}" if dist.get("direct_url") else "")] if dist else [])
    result = Result.fail(problem.split(":")[0] if problem.startswith("No module") else problem, details,
                         hint="sd-scripts' requirements install it with `-e .`; without it, scripts started "
                              "outside the sd-scripts folder (kohya_ss GUI tools, networks/*.py, tools/*.py) die "
                              "with `No module named 'library'`")
    return with_plan(ctx, result)


def classify(path: str, prefix: Path, base: Path, user_site: str | None) -> str | None:
    """None when `path` is inside the venv, else where it is."""
    real = Path(path).resolve()
    if real.is_relative_to(prefix):
        return None
    if user_site and real.is_relative_to(Path(user_site).resolve()):
        return "user site-packages"
    if base != prefix and real.is_relative_to(base):
        return f"the system Python at {base}"
    return "outside the venv"


def script_interpreter(script: Path) -> str | None:
    """The interpreter a console script runs (its shebang, or pip's /bin/sh trampoline for long paths)."""
    try:
        with open_regular(script) as fh:
            head = fh.read(512).decode("utf-8", "replace").splitlines()
    except FileProblem:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    found = re.search(r"exec' '?\"?([^\"' ]+)", "\n".join(head[:3])) if head[0].strip() == "#!/bin/sh" else None
    return found.group(1) if found else head[0][2:].strip().split()[0]


@check("deps.isolation", "the run's modules and the `accelerate` command come from the venv",
       requires=("repo.present", "deps.interpreter"), prefetch=prefetch)
def isolation(ctx: Context) -> Result:
    info = env(ctx)
    prefix = Path(info["python"]["prefix"]).resolve()
    base = Path(info["python"]["base_prefix"]).resolve()
    bad, odd = _modules_outside(ctx, prefix, base, info["site"]["user_site"])
    details = [f"venv: {prefix}" + ("" if prefix != base else " (not a venv: the interpreter's own prefix)")]
    if info["site"]["pythonpath"]:
        details.append(f"PYTHONPATH={info['site']['pythonpath']}")
    launcher_problems, launcher_odd, launcher_line = _launcher(ctx.target.python_exe.parent)
    odd += launcher_odd
    details.append(launcher_line)
    if bad or launcher_problems:
        return Result.fail(f"{len(bad) + len(launcher_problems)} part(s) of the run come from outside the venv",
                           bad + launcher_problems + odd + details,
                           hint="the run uses whatever version is there, not the checkout's pins, and breaks "
                                "when that changes; remove the outside copy (`pip uninstall --user <pkg>` for "
                                "user site-packages; `include-system-site-packages = false` in pyvenv.cfg), or "
                                f"reinstall accelerate into the venv: `{python_cmd(ctx)} -m pip install "
                                "--force-reinstall --no-deps accelerate==<pin>`")
    if odd:
        return Result.warn(f"{len(odd)} thing(s) the run may pick up from outside the venv", odd + details,
                           hint="fine if intended (an editable install, an activated shell); otherwise the run "
                                "may use other code than the venv's")
    return Result.ok(f"the run's modules and `accelerate` come from {prefix}", details)


def _modules_outside(ctx: Context, prefix: Path, base: Path, user_site: str | None) -> tuple[list[str], list[str]]:
    """The run's required modules found outside the venv: (user site or system Python, anywhere else)."""
    found, resolution = closure(ctx), resolve(ctx)
    bad: list[str] = []
    odd: list[str] = []
    if found is None or resolution is None:
        return bad, odd
    third = resolution.third_party(found)
    for top in sorted(t for t, uses in third.items() if any(u.required for u in uses)):
        spec = resolution.specs.get(top)
        if not spec or "error" in spec:
            continue  # deps.imports reports it
        path = spec["origin"] if spec["origin"] not in (None, "namespace") else (spec["locations"] or [None])[0]
        kind = classify(path, prefix, base, user_site) if path else None
        if kind == "user site-packages" or (kind and kind.startswith("the system")):
            bad.append(f"{top} from {path} ({kind})")
        elif kind:
            odd.append(f"{top} from {path} ({kind})")
    return bad, odd


def _launcher(scripts: Path) -> tuple[list[str], list[str], str]:
    """The venv's `accelerate` command: (problems, oddities, a details line)."""
    own = next((scripts / n for n in ("accelerate", "accelerate.exe") if (scripts / n).is_file()), None)
    problems: list[str] = []
    odd: list[str] = []
    if own is None:
        problems.append(f"no `accelerate` command in {scripts}: `accelerate launch` would run another Python's "
                        "accelerate, or none")
    elif own.suffix != ".exe":
        runs = script_interpreter(own)
        if runs and not Path(runs).exists():
            problems.append(f"{own} starts {runs}, which does not exist (the venv moved after install?): "
                            "`bad interpreter`")
        elif runs and Path(runs).parent.resolve() != scripts.resolve():
            problems.append(f"{own} starts {runs}, not this venv's Python")
    on_path = shutil.which("accelerate")
    if on_path and own and Path(on_path).resolve() != own.resolve():
        odd.append(f"`accelerate` on this shell's PATH is {on_path}, not {own}: activate the venv "
                   f"(`source {scripts / 'activate'}`) or launch with `{own} launch`")
    line = f"accelerate command: {own or 'none'}" + (f"; on PATH: {on_path}" if on_path else
                                                     "; not on this shell's PATH")
    return problems, odd, line


@check("deps.deep", "every module and `from X import Y` name of the run really imports",
       tags=("preflight", "probe"), requires=("repo.present", "deps.imports"), timeout_s=300,
       prefetch=prefetch_deep)
def deep(ctx: Context) -> Result:
    from lorasetup.sd import stackprobe  # one process imports the stack for deps.deep and the device gate
    modules, pairs = deep_targets(ctx)
    answer = stackprobe.facts(ctx)
    found = closure(ctx)
    uses = found.uses if found else []
    failures = [f"the deep-import targets could not be computed: {answer.targets_error}"] \
        if answer.targets_error else []
    for module, error in sorted(answer.imports.items()):
        if error:
            at = [u for u in uses if u.top == module and u.required]
            failures.append(f"import {module}" + (f" ({where(at)})" if at else "") + f": {error}")
    for key, error in sorted(answer.from_imports.items()):
        if error:
            module, _, name = key.partition(":")
            at = [u for u in uses if u.module == module and name in u.names]
            failures.append(f"from {module} import {name}" + (f" ({where(at)})" if at else "") + f": {error}")
    if failures:
        return Result.fail(f"{len(failures)} import(s) fail when really imported in {ctx.target.python_exe}",
                           failures,
                           hint="the run dies at startup with the first of these errors; usually a package off "
                                "its pin (see deps.versions, then `lorasetup bootstrap --fix`) or a broken binary "
                                f"build (`{python_cmd(ctx)} -m pip install --force-reinstall --no-deps <pkg>==<pin>`)")
    return Result.ok(f"{len(modules)} modules and {len(pairs)} imported names load in the training interpreter")
