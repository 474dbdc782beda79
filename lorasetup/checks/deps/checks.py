"""The deps gate: the training interpreter, every import of the run, the checkout's pins, sd-scripts' own
`library` package, isolation from user and system packages, and a deep import of the stack.

Fix (`bootstrap --fix`): ONE pip plan for everything missing or off its pin, built only from the checkout's
requirement files and lorasetup's module-to-distribution table; a module neither knows is never guessed
into a pip name, and torch (with the packages built against it) is never installed automatically.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from lorasetup.checks import check
from lorasetup.checks.deps.requirements import Pin, RequirementSet, checkout_files, parse_files
from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError, tail
from lorasetup.engine.result import CheckFailed, Fix, FixError, Result
from lorasetup.engine.target import tomllib
from lorasetup.sd.imports import Closure, ImportUse, closure, deep_targets, dist_for, resolve

DEFAULT_PYTHONS = ">=3.10,<3.13"  # sd-scripts README: Python 3.10; 3.11 and 3.12 "will work but not tested"
# Wheels built for one torch build (CUDA, ROCm, CPU, MPS): pip would fetch a mismatched build or replace
# torch itself, gigabytes, so lorasetup prints their command instead of running it.
BUILD_SPECIFIC = ("torch", "torchvision", "torchaudio", "xformers")
PIP_TIMEOUT_S = 1800
TORCH_HELP = "pick the build for your machine at https://pytorch.org/get-started/locally/"

ENV_PROBE = """
import os, platform, site, sys
import importlib.util
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]  # `python -c` puts the working directory first; a training run does not
def fmt(v):
    s = "%d.%d.%d" % (v.major, v.minor, v.micro)
    return s if v.releaselevel == "final" else s + v.releaselevel[0] + str(v.serial)
RESULT["python"] = {"version": fmt(sys.version_info), "executable": sys.executable, "prefix": sys.prefix,
                    "base_prefix": getattr(sys, "base_prefix", sys.prefix)}
RESULT["markers"] = {
    "implementation_name": sys.implementation.name, "implementation_version": fmt(sys.implementation.version),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}
RESULT["site"] = {"user_site": site.getusersitepackages() if site.ENABLE_USER_SITE else None,
                  "path": sys.path, "pythonpath": os.environ.get("PYTHONPATH", "")}
dists = {}
try:
    import importlib.metadata as md  # Python 3.8+; older ones fail deps.interpreter's version check anyway
except ImportError:
    md = None
for d in (md.distributions() if md else ()):
    try:
        name, version = d.metadata["Name"], d.version
    except Exception:
        continue
    key = "-".join(filter(None, __import__("re").split(r"[-_.]+", (name or "").lower())))
    if key and key not in dists:  # the first on sys.path wins, as for imports
        dists[key] = {"name": name, "version": version, "path": str(getattr(d, "_path", ""))}
        if key == "library":
            dists[key]["direct_url"] = d.read_text("direct_url.json")
RESULT["dists"] = dists
try:
    spec = importlib.util.find_spec("library")
    RESULT["library"] = spec and {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}
except Exception as exc:
    RESULT["library"] = {"error": type(exc).__name__ + ": " + str(exc)}
"""


def env(ctx: Context) -> dict[str, Any]:
    """The training interpreter's version, marker environment, paths and installed distributions."""
    answer = ctx.probe("deps:env", ENV_PROBE, timeout=60)
    assert answer is not None
    return answer


def python_cmd(ctx: Context) -> str:
    return shlex.quote(str(ctx.target.python_exe))


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


# ---------------------------------------------------------------- analyses shared by checks and the fix

@dataclass
class Missing:
    """A required module the training interpreter cannot find."""

    module: str
    uses: list[ImportUse]
    error: str | None = None


@dataclass
class Skew:
    """A requirement line the installed distributions do not satisfy."""

    pin: Pin
    installed: str | None

    def describe(self) -> str:
        have = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.pin.req.name}: {have}; {self.pin.place} wants {self.pin.spec}"


def missing_modules(ctx: Context) -> tuple[list[Missing], list[Missing], Closure | None]:
    """(required modules missing, optional ones missing, the closure), from the one find_spec probe."""
    found, resolution = closure(ctx), resolve(ctx)
    if found is None or resolution is None:
        return [], [], found
    required: list[Missing] = []
    optional: list[Missing] = []
    for top, uses in sorted(resolution.third_party(found).items(), key=lambda kv: kv[0].lower()):
        spec = resolution.specs.get(top)
        if spec is not None and "error" not in spec:
            continue
        error = spec.get("error") if spec else None
        needed = [u for u in uses if u.required]
        if needed:
            required.append(Missing(top, needed, error))
        elif any(u.guarded for u in uses):
            optional.append(Missing(top, [u for u in uses if u.guarded], error))
    return required, optional, found


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


def library_problem(ctx: Context) -> str | None:
    """Why sd-scripts' `library` package does not resolve to this checkout, or None."""
    tree = ctx.target.sd_scripts
    assert tree is not None
    spec = env(ctx)["library"]
    if spec is None:
        return "No module named 'library': sd-scripts' own package is not installed in this interpreter"
    if "error" in spec:
        return f"finding `library` fails: {spec['error']}"
    where = Path(spec["locations"][0]) if spec["locations"] else Path(spec["origin"] or "").parent
    if not (where / "__init__.py").is_file():
        return f"`library` is installed from {where}, which no longer exists (the folder moved after install?)"
    if where.resolve() != (tree / "library").resolve():
        return f"`library` resolves to {where}, not this checkout's {tree / 'library'} (another checkout?)"
    return None


@dataclass
class Plan:
    """The one repair: a pip install of pinned specs, and sd-scripts' own package as editable."""

    specs: dict[str, str] = field(default_factory=dict)      # canonical name -> pip spec
    from_table: list[str] = field(default_factory=list)      # names that no requirement file pins
    unknown: list[Missing] = field(default_factory=list)     # never guessed into a pip name
    build_specific: list[str] = field(default_factory=list)  # torch & co: printed, not run
    library: bool = False
    held_torch: str | None = None
    blocked: str | None = None
    fix: Fix | None = None

    def hint(self, ctx: Context) -> str:
        parts = []
        if self.blocked:
            parts.append(self.blocked)
        if self.fix:
            parts.append("`lorasetup bootstrap --fix` applies the fix below")
        if self.build_specific:
            parts.append(f"install {', '.join(self.build_specific)} yourself ({TORCH_HELP}): "
                         f"`{torch_command(ctx, self.build_specific)}`")
        if self.unknown:
            names = ", ".join(m.module for m in self.unknown)
            parts.append(f"no requirement file pins {names} and lorasetup does not guess package names "
                         "(typosquatting): find the package that provides it in the project's docs, check its "
                         f"name on pypi.org, then `{python_cmd(ctx)} -m pip install <that package>`")
        return "; ".join(parts)


def torch_command(ctx: Context, specs: list[str]) -> str:
    reqs = requirement_set(ctx)
    options = reqs.index_options if reqs else []
    return " ".join([python_cmd(ctx), "-m", "pip", "install", *map(shlex.quote, options),
                     *map(shlex.quote, specs)])


def install_plan(ctx: Context) -> Plan:
    """The same Plan object for every deps check of one run, so the fixer applies it once."""
    return ctx.memo("deps:plan", lambda: _build_plan(ctx))


def _build_plan(ctx: Context) -> Plan:
    plan = Plan()
    reqs = requirement_set(ctx)
    dists = env(ctx)["dists"]

    def add(name: str, spec: str) -> None:
        if name in BUILD_SPECIFIC:
            if spec not in plan.build_specific:
                plan.build_specific.append(spec)
        else:
            plan.specs.setdefault(name, spec)

    required, _, _ = missing_modules(ctx)
    for miss in required:
        dist = dist_for(miss.module) or miss.module
        pin = reqs.find(dist) if reqs else None
        if pin is not None:
            add(pin.name, pin.spec)
        elif dist_for(miss.module):
            add(canonicalize_name(dist), dist)
            plan.from_table.append(dist)
        else:
            plan.unknown.append(miss)
    for skew in version_skews(ctx):
        add(skew.pin.name, skew.pin.spec)
    plan.specs = dict(sorted(plan.specs.items()))
    plan.library = library_problem(ctx) is not None
    torch = dists.get("torch")
    if torch is None and any(m.module == "torch" for m in required):
        plan.blocked = ("torch is not installed, and pip would pull a build of its own as a dependency of the "
                        "other packages: install torch first, then run `lorasetup bootstrap --fix` again")
        return plan
    if ctx.target.sources.get("python") == "current interpreter":
        plan.blocked = (f"no training venv was found (<root>/venv, <root>/.venv), so these checks ran against "
                        f"lorasetup's own interpreter {ctx.target.python_exe}; lorasetup will not pip install "
                        "into it: pass `--python /path/to/your/training/venv/bin/python`")
        return plan
    commands: list[list[str]] = []
    if plan.specs:
        if torch is not None:  # named so pip fails rather than replacing the installed build
            plan.held_torch = f"torch=={torch['version']}"
        commands.append(["install", *ctx.pip_args, *plan.specs.values(),
                         *([plan.held_torch] if plan.held_torch else [])])
    if plan.library:
        tree = ctx.target.sd_scripts
        commands.append(["install", *ctx.pip_args, "--no-deps", "-e", str(tree)])
    if commands:
        plan.fix = pip_fix(ctx, plan, commands)
    return plan


def pip_fix(ctx: Context, plan: Plan, commands: list[list[str]]) -> Fix:
    python = ctx.target.python_exe
    state: dict[str, Any] = {}

    def apply() -> None:
        if "done" in state:  # several deps checks carry this one plan; pip runs once
            if state["done"]:
                raise FixError(state["done"])
            return
        state["done"] = ""
        for args in commands:
            error = run_pip(python, args)
            if error:
                state["done"] = error
                raise FixError(error)

    parts = []
    pinned = [name for name, spec in plan.specs.items() if spec not in plan.from_table]
    if pinned:
        parts.append(f"install {len(pinned)} package(s) at the checkout's pins: {', '.join(pinned)}")
    if plan.from_table:
        parts.append(f"install {', '.join(plan.from_table)} (not pinned by the checkout; the package name comes "
                     "from lorasetup's module table)")
    if plan.held_torch:
        parts.append(f"{plan.held_torch} is named only to keep the installed torch build in place")
    if plan.library:
        parts.append("reinstall sd-scripts' own `library` package from this checkout (editable, no deps)")
    shown = [" ".join([python_cmd(ctx), "-m", "pip", *map(shlex.quote, args)]) for args in commands]
    return Fix("; ".join(parts), shown, apply, safe=True)


def run_pip(python: Path, args: list[str]) -> str:
    """Run `python -m pip <args>`; '' on success, else pip's own error lines and what state it left."""
    cmd = [str(python), "-m", "pip", *args[:1], "--disable-pip-version-check", *args[1:]]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=PIP_TIMEOUT_S, env={**os.environ, "PIP_NO_INPUT": "1"})
    except subprocess.TimeoutExpired:
        return f"pip did not finish within {PIP_TIMEOUT_S} s; the environment is as pip left it"
    except OSError as exc:
        return f"cannot run {python}: {exc.strerror or exc}"
    if proc.returncode == 0:
        return ""
    output = proc.stderr + proc.stdout
    errors = [line for line in output.splitlines() if line.startswith("ERROR:") or "No module named pip" in line]
    shown = "\n".join(errors[-3:]) or tail(output, 4)
    if "No module named pip" in output:
        shown += f"\nthis venv has no pip: `{shlex.quote(str(python))} -m ensurepip --upgrade`, then run the fix again"
    return (f"pip failed (exit {proc.returncode}):\n{shown}\nNothing was rolled back: the environment is as "
            "pip left it. Run `lorasetup doctor` to see what is still missing.")


def with_plan(ctx: Context, result: Result) -> Result:
    """A failing result gets the run's one plan as its fix (and its hint when it has none)."""
    plan = install_plan(ctx)
    result.fix = plan.fix
    extra = plan.hint(ctx)
    result.hint = f"{result.hint}; {extra}" if result.hint and extra else (result.hint or extra or None)
    return result


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

def venv_config(python: Path) -> Path | None:
    for folder in (python.parent.parent, python.parent):  # bin/python or Scripts/python.exe
        if (folder / "pyvenv.cfg").is_file():
            return folder / "pyvenv.cfg"
    return None


def read_cfg(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip().lower()] = value.strip()
    return out


def supported_pythons(ctx: Context) -> tuple[SpecifierSet, str]:
    """The Python versions the checkout declares (pyproject.toml requires-python), else the default."""
    for root in dict.fromkeys(p for p in (ctx.target.kohya_root, ctx.target.sd_scripts) if p):
        pyproject = root / "pyproject.toml"
        try:
            with pyproject.open("rb") as fh:
                declared = tomllib.load(fh).get("project", {}).get("requires-python")
        except (OSError, tomllib.TOMLDecodeError):
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
    skews = version_skews(ctx)
    files = ", ".join(f.name for f in reqs.files)
    notes = [f"not checked: {u.place} `{u.text}`: {u.reason}" for u in reqs.unchecked]
    notes += [f"not checked here: {u.place} `{u.text}` ({u.reason}; see deps.library)" for u in reqs.editables]
    notes += [f"not for this machine: {p.place} `{p.req}`" for p in reqs.excluded]
    if skews:
        missing = [s.pin.req.name for s in skews if s.installed is None]
        off = [f"{s.pin.req.name} {s.installed} (wants {s.pin.req.specifier})" for s in skews if s.installed]
        summary = ", ".join([f"{n} missing" for n in missing] + off)
        result = Result.fail(f"{len(skews)} of {len(reqs.pins)} requirements of {files} not met: {summary}",
                             [s.describe() for s in skews] + notes,
                             hint="a package missing or off its pin breaks the run at start or minutes in "
                                  "(`No module named ...`, `cannot import name 'cached_download'`, NumPy 1/2 "
                                  "errors, accelerate keyword errors)")
        return with_plan(ctx, result)
    return Result.ok(f"all {len(reqs.pins)} requirements of {files} met", notes)


@check("deps.library", "sd-scripts' own `library` package is installed from this checkout",
       requires=("repo.present", "deps.interpreter"), prefetch=prefetch,
       fixes="`pip install --no-deps -e` of this checkout, sd-scripts' own `library` package (safe)")
def library(ctx: Context) -> Result:
    problem = library_problem(ctx)
    tree = ctx.target.sd_scripts
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
        with script.open("rb") as fh:
            head = fh.read(512).decode("utf-8", "replace").splitlines()
    except OSError:
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
    user_site = info["site"]["user_site"]
    found, resolution = closure(ctx), resolve(ctx)
    bad, odd = [], []
    if found is not None and resolution is not None:
        third = resolution.third_party(found)
        for top in sorted(t for t, uses in third.items() if any(u.required for u in uses)):
            spec = resolution.specs.get(top)
            if not spec or "error" in spec:
                continue  # deps.imports reports it
            path = spec["origin"] if spec["origin"] not in (None, "namespace") else \
                (spec["locations"] or [None])[0]
            kind = classify(path, prefix, base, user_site) if path else None
            if kind in ("user site-packages",) or (kind and kind.startswith("the system")):
                bad.append(f"{top} from {path} ({kind})")
            elif kind:
                odd.append(f"{top} from {path} ({kind})")
    details = [f"venv: {prefix}" + ("" if prefix != base else " (not a venv: the interpreter's own prefix)")]
    if info["site"]["pythonpath"]:
        details.append(f"PYTHONPATH={info['site']['pythonpath']}")
    python = ctx.target.python_exe
    scripts = python.parent
    own = next((scripts / n for n in ("accelerate", "accelerate.exe") if (scripts / n).is_file()), None)
    launcher_problems: list[str] = []
    if own is None:
        launcher_problems.append(f"no `accelerate` command in {scripts}: `accelerate launch` would run another "
                                 "Python's accelerate, or none")
    elif own.suffix != ".exe":
        runs = script_interpreter(own)
        if runs and not Path(runs).exists():
            launcher_problems.append(f"{own} starts {runs}, which does not exist (the venv moved after "
                                     "install?): `bad interpreter`")
        elif runs and Path(runs).parent.resolve() != scripts.resolve():
            launcher_problems.append(f"{own} starts {runs}, not this venv's Python")
    on_path = shutil.which("accelerate")
    if on_path and own and Path(on_path).resolve() != own.resolve():
        odd.append(f"`accelerate` on this shell's PATH is {on_path}, not {own}: activate the venv "
                   f"(`source {scripts / 'activate'}`) or launch with `{own} launch`")
    details.append(f"accelerate command: {own or 'none'}" + (f"; on PATH: {on_path}" if on_path else
                                                             "; not on this shell's PATH"))
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


@check("deps.deep", "every module and `from X import Y` name of the run really imports",
       tags=("preflight", "probe"), requires=("repo.present", "deps.imports"), timeout_s=300,
       prefetch=prefetch_deep)
def deep(ctx: Context) -> Result:
    from lorasetup.sd import stackprobe  # one process imports the stack for deps.deep and the device gate
    modules, pairs = deep_targets(ctx)
    answer = stackprobe.result(ctx)
    found = closure(ctx)
    uses = found.uses if found else []
    failures = [f"the deep-import targets could not be computed: {answer['targets_error']}"] \
        if answer.get("targets_error") else []
    for module, error in sorted((answer.get("imports") or {}).items()):
        if error:
            at = [u for u in uses if u.top == module and u.required]
            failures.append(f"import {module}" + (f" ({where(at)})" if at else "") + f": {error}")
    for key, error in sorted((answer.get("from_imports") or {}).items()):
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
