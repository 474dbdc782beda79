"""The deps gate's one repair: what is missing or off its pin, and the ONE pip plan that installs it.

Built only from the checkout's requirement files and lorasetup's module-to-distribution table; a module
neither knows is never guessed into a pip name, and torch (with the packages built against it) is never
installed automatically.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from lorasetup.checks.deps.installed import installed_now
from lorasetup.checks.deps.pins import RUN, UNMET, Verdict, judge, requirement_set
from lorasetup.checks.deps.requirements import BUILD_SPECIFIC
from lorasetup.checks.deps.venv import env, python_cmd
from lorasetup.engine.context import Context
from lorasetup.engine.probe import tail
from lorasetup.engine.result import Fix, FixError, Result
from lorasetup.sd.imports import Closure, ImportUse, closure, dist_for, resolve

PIP_TIMEOUT_S = 1800
TORCH_HELP = "pick the build for your machine at https://pytorch.org/get-started/locally/"


@dataclass
class Missing:
    """A required module the training interpreter cannot find."""

    module: str
    uses: list[ImportUse]
    error: str | None = None



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
    from_accept: list[str] = field(default_factory=list)     # `[deps] accept` specs installed instead of a pin
    unknown: list[Missing] = field(default_factory=list)     # never guessed into a pip name
    build_specific: list[str] = field(default_factory=list)  # torch & co: printed, not run
    library: bool = False
    held_torch: str | None = None
    blocked: str | None = None
    fix: Fix | None = None

    def add(self, name: str, spec: str) -> None:
        if name in BUILD_SPECIFIC:
            if spec not in self.build_specific:
                self.build_specific.append(spec)
        else:
            self.specs.setdefault(name, spec)

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


def failing_pins(ctx: Context) -> list[Verdict]:
    """Unmet pins that fail this run: those of the modules it imports (with `--all-pins`, every one)."""
    return [v for v in judge(ctx) if v.state == UNMET and (v.use == RUN or ctx.all_pins)]


def install_plan(ctx: Context) -> Plan:
    """The same Plan object for every deps check of one run, so the fixer applies it once."""
    return ctx.memo("deps:plan", lambda: _build_plan(ctx))


def _build_plan(ctx: Context) -> Plan:
    plan = Plan()
    for verdict in failing_pins(ctx):  # first: an accepted spec stands in for its pin
        plan.add(verdict.pin.name, verdict.install)
        if verdict.install != verdict.pin.spec:
            plan.from_accept.append(verdict.install)
    required, _, _ = missing_modules(ctx)
    _add_missing(ctx, plan, required)
    plan.specs = dict(sorted(plan.specs.items()))
    plan.library = library_problem(ctx) is not None
    plan.blocked = _blocked(ctx, required)
    if plan.blocked:
        return plan
    commands: list[list[str]] = []
    if plan.specs:
        torch = env(ctx)["dists"].get("torch")
        if torch is not None:  # named so pip fails rather than replacing the installed build
            plan.held_torch = f"torch=={torch['version']}"
        commands.append(["install", *ctx.pip_args, *plan.specs.values(),
                         *([plan.held_torch] if plan.held_torch else [])])
    if plan.library:
        commands.append(["install", *ctx.pip_args, "--no-deps", "-e", str(ctx.target.sd_scripts)])
    if commands:
        plan.fix = pip_fix(ctx, plan, commands)
    return plan


def _add_missing(ctx: Context, plan: Plan, required: list[Missing]) -> None:
    """Missing modules: at the checkout's pin, else under the module table's name, else never guessed."""
    reqs = requirement_set(ctx)
    for miss in required:
        dist = dist_for(miss.module) or miss.module
        pin = reqs.find(dist) if reqs else None
        if pin is not None:
            plan.add(pin.name, pin.spec)
        elif dist_for(miss.module):
            plan.add(canonicalize_name(dist), dist)
            plan.from_table.append(dist)
        else:
            plan.unknown.append(miss)


def _blocked(ctx: Context, required: list[Missing]) -> str | None:
    """Why no pip command may run here, or None."""
    if env(ctx)["dists"].get("torch") is None and any(m.module == "torch" for m in required):
        return ("torch is not installed, and pip would pull a build of its own as a dependency of the "
                "other packages: install torch first, then run `lorasetup bootstrap --fix` again")
    if ctx.target.sources.get("python") == "current interpreter":
        return (f"no training venv was found (<root>/venv, <root>/.venv), so these checks ran against "
                f"lorasetup's own interpreter {ctx.target.python_exe}; lorasetup will not pip install "
                "into it: pass `--python /path/to/your/training/venv/bin/python`")
    return None


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
                state["done"] = "\n".join(filter(None, [error, installed_now(python, plan.specs.values())]))
                raise FixError(state["done"])

    shown = [" ".join([python_cmd(ctx), "-m", "pip", *map(shlex.quote, args)]) for args in commands]
    return Fix(describe(plan), shown, apply, safe=True)


def describe(plan: Plan) -> str:
    """What the plan installs, and from where each spec comes."""
    parts = []
    special = set(plan.from_table) | set(plan.from_accept)
    pinned = [name for name, spec in plan.specs.items() if spec not in special]
    if pinned:
        parts.append(f"install {len(pinned)} package(s) at the checkout's pins: {', '.join(pinned)}")
    if plan.from_accept:
        parts.append(f"install {', '.join(plan.from_accept)} (your [deps] accept, instead of the checkout's pin)")
    if plan.from_table:
        parts.append(f"install {', '.join(plan.from_table)} (not pinned by the checkout; the package name comes "
                     "from lorasetup's module table)")
    if plan.held_torch:
        parts.append(f"{plan.held_torch} is named only to keep the installed torch build in place")
    if plan.library:
        parts.append("reinstall sd-scripts' own `library` package from this checkout (editable, no deps)")
    return "; ".join(parts)


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

