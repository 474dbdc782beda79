"""The import closure of an entry script inside the sd-scripts tree, read with `ast` (nothing is imported).

Starting at the entry script (plus the modules the training arguments name: `--network_module`, the
optimizer's package, `--log_with`, `--xformers`, ...), every import that runs when the module is imported is
followed through the checkout's own modules (first-party: a file or folder at the tree's root, as sd-scripts
runs with its folder first on sys.path). Imports of everything else are recorded with their place and how
sure it is that they run:

- required: runs at import time and nothing catches its failure;
- guarded: inside `try/except ImportError` (or a broader except) whose handler does not re-raise, so a
  missing package has a fallback;
- deferred: inside a function or behind an `if` (a flag), so it runs only on some paths.

Which of the remaining top-level names are stdlib, and where each resolves, is asked of the training
interpreter in ONE probe (`importlib.util.find_spec`, which imports nothing but parent packages).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine import files
from lorasetup.engine.context import Context
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.result import CheckFailed
from lorasetup.sd.argspec import cache_dir
from lorasetup.sd.facts import MODULE_TO_DIST, optimizer_module
from lorasetup.sd.programs import program
from lorasetup.sd.trainargs import train_args

CACHE_VERSION = 1
CATCHES_IMPORT_ERROR = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
DEFAULT_NETWORK_MODULE = "networks.lora"  # the module repo.present requires; the kohya_ss GUI's LoRA default
# Imported for an option but not by name in sd-scripts' code: accelerate's TensorBoardTracker for `--log_with
# tensorboard` (library/train_util.py prepare_accelerator; arg_imports decides when a run does)
OPTION_ONLY_IMPORTS = {"tensorboard": "--log_with tensorboard, through accelerate's TensorBoardTracker"}


@dataclass(frozen=True)
class ImportUse:
    """One import statement of a module outside the checkout (or one the training arguments ask for)."""

    module: str                 # as imported: `diffusers.models.autoencoders.autoencoder_kl`
    names: tuple[str, ...]      # `from module import a, b`; () for `import module`
    file: str                   # path inside the tree, or the training argument's place
    line: int                   # 0 for a training argument
    guarded: bool = False
    deferred: bool = False

    @property
    def top(self) -> str:
        return self.module.split(".", 1)[0]

    @property
    def required(self) -> bool:
        return not (self.guarded or self.deferred)

    @property
    def place(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Closure:
    """What the scan found: the checkout's modules it read, and the imports of everything else."""

    root: Path
    modules: dict[str, str] = field(default_factory=dict)       # first-party module -> file inside the tree
    uses: list[ImportUse] = field(default_factory=list)
    missing_first_party: list[tuple[str, str]] = field(default_factory=list)  # (module, place)
    unreadable: list[str] = field(default_factory=list)

    def by_top(self) -> dict[str, list[ImportUse]]:
        out: dict[str, list[ImportUse]] = {}
        for use in self.uses:
            out.setdefault(use.top, []).append(use)
        return out


@dataclass
class Resolution:
    """The training interpreter's answer: its stdlib names and where each other top-level module is."""

    stdlib: set[str]
    specs: dict[str, dict[str, Any] | None]

    def third_party(self, closure: Closure) -> dict[str, list[ImportUse]]:
        return {top: uses for top, uses in closure.by_top().items() if top not in self.stdlib}


def first_party(root: Path, name: str) -> bool:
    """True when a top-level name is a module or package of the checkout itself."""
    return (root / name).is_dir() or (root / f"{name}.py").is_file()


def module_file(root: Path, module: str) -> Path | None:
    """The file that defines a dotted first-party module, if any."""
    base = root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if base.is_dir():
        return base  # a namespace package: importable, nothing to run
    return None


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else "" for t in types}
    return bool(names & CATCHES_IMPORT_ERROR)


def _stops(stmt: ast.stmt) -> bool:
    """A handler statement that ends the program or re-raises (`raise`, `exit(1)`, `sys.exit(1)`)."""
    if isinstance(stmt, ast.Raise):
        return True
    call = stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else None
    func = call.func if call else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ("exit", "quit", "_exit")


def _falls_back(node: ast.Try) -> bool:
    """A try whose ImportError handler carries on instead of stopping (sd-scripts' optional imports)."""
    return any(_catches_import_error(h) and not any(_stops(s) for s in h.body) for h in node.handlers)


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def file_imports(path: Path, rel: str, module: str, is_entry: bool) -> tuple[list[ImportUse], str | None]:
    """Every import statement of one file, with absolute module names and how sure it is that it runs;
    or the reason the file cannot be parsed."""
    try:
        with warnings.catch_warnings():  # the checkout's invalid escapes etc. are not ours to report
            warnings.simplefilter("ignore")
            tree = ast.parse(files.read_bytes(path), filename=str(path))
    except (SyntaxError, ValueError, files.FileProblem) as exc:
        return [], f"{rel}: {exc}"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    walker = _Walker(rel, package, is_entry)
    walker.walk(tree.body, False, False)
    return walker.found, None


class _Walker:
    """Walks one module's statements the way Python runs them at import: a function body or an `if` branch
    is deferred, a try with a falling-back ImportError handler is guarded, the entry's `__main__` block runs."""

    def __init__(self, rel: str, package: str, is_entry: bool) -> None:
        self.rel, self.package, self.is_entry = rel, package, is_entry
        self.found: list[ImportUse] = []

    def walk(self, body: list[ast.stmt], guarded: bool, deferred: bool) -> None:
        for node in body:
            visit = getattr(self, f"visit_{type(node).__name__}", None)
            if visit is not None:
                visit(node, guarded, deferred)

    def visit_Import(self, node: ast.Import, guarded: bool, deferred: bool) -> None:
        self.found.extend(ImportUse(a.name, (), self.rel, node.lineno, guarded, deferred) for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom, guarded: bool, deferred: bool) -> None:
        base = absolute(node, self.package)
        if base is not None:
            names = tuple(a.name for a in node.names if a.name != "*")
            self.found.append(ImportUse(base, names, self.rel, node.lineno, guarded, deferred))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef, guarded: bool, deferred: bool) -> None:
        self.walk(node.body, guarded, True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef, guarded: bool, deferred: bool) -> None:
        self.walk(node.body, guarded, deferred)

    def visit_If(self, node: ast.If, guarded: bool, deferred: bool) -> None:
        if _is_main_guard(node.test):
            if self.is_entry:  # the entry script runs as __main__
                self.walk(node.body, guarded, deferred)
            self.walk(node.orelse, guarded, True)
        elif _is_type_checking(node.test):
            self.walk(node.orelse, guarded, deferred)
        else:
            self.walk(node.body, guarded, True)
            self.walk(node.orelse, guarded, True)

    def visit_Try(self, node: ast.Try, guarded: bool, deferred: bool) -> None:
        self.walk(node.body, guarded or _falls_back(node), deferred)
        for handler in node.handlers:
            self.walk(handler.body, guarded, True)
        self.walk(node.orelse, guarded, deferred)
        self.walk(node.finalbody, guarded, deferred)

    visit_TryStar = visit_Try  # Python 3.11's `except*` has the same fields

    def visit_With(self, node: ast.With | ast.AsyncWith, guarded: bool, deferred: bool) -> None:
        self.walk(node.body, guarded, deferred)

    visit_AsyncWith = visit_With

    def visit_For(self, node: ast.For | ast.AsyncFor | ast.While, guarded: bool, deferred: bool) -> None:
        self.walk(node.body, guarded, True)
        self.walk(node.orelse, guarded, True)

    visit_AsyncFor = visit_While = visit_For

    def visit_Match(self, node: Any, guarded: bool, deferred: bool) -> None:
        for case in node.cases:
            self.walk(case.body, guarded, True)


def absolute(node: ast.ImportFrom, package: str) -> str | None:
    """The absolute module of a `from ... import`, resolving relative levels against `package`."""
    if not node.level:
        return node.module
    parts = package.split(".") if package else []
    if node.level - 1 > len(parts):
        return None
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class ScanCache:
    """Per-file scan results under $XDG_CACHE_HOME/lorasetup, reused while a file's mtime and size hold
    (parsing sd-scripts' closure is most of deps.imports' time; a stat is not)."""

    def __init__(self, root: Path) -> None:
        digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir() / f"imports-{digest}.json"
        self.dirty = False
        try:
            raw = files.read_json(self.path, files.DATA_LIMIT)
            self.entries: dict[str, Any] = raw["files"] if raw.get("version") == CACHE_VERSION else {}
        except (files.FileProblem, KeyError, TypeError, AttributeError):
            self.entries = {}

    def imports(self, path: Path, rel: str, module: str, is_entry: bool) -> tuple[list[ImportUse], str | None]:
        key, stat = f"{rel}|{module}|{int(is_entry)}", _stat(path)
        hit = self.entries.get(key)
        if hit is not None and hit["stat"] == stat:
            return [ImportUse(m, tuple(n), rel, line, g, d) for m, n, line, g, d in hit["uses"]], hit["error"]
        uses, error = file_imports(path, rel, module, is_entry)
        self.entries[key] = {"stat": stat, "error": error,
                             "uses": [[u.module, list(u.names), u.line, u.guarded, u.deferred] for u in uses]}
        self.dirty = True
        return uses, error

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": self.entries}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only costs speed


class _Scanner:
    """Follows first-party imports from the entry modules; with `every_path`, also those that run only on
    some paths (inside functions, behind flags, guarded), for "what does sd-scripts import anywhere"."""

    def __init__(self, root: Path, cache: ScanCache, every_path: bool = False) -> None:
        self.closure = Closure(root)
        self.root = root
        self.cache = cache
        self.every_path = every_path
        self.todo: list[str] = []
        self._first: dict[str, bool] = {}
        self._files: dict[str, Path | None] = {}

    def first_party(self, name: str) -> bool:
        if name not in self._first:
            self._first[name] = first_party(self.root, name)
        return self._first[name]

    def module_file(self, module: str) -> Path | None:
        if module not in self._files:
            self._files[module] = module_file(self.root, module)
        return self._files[module]

    def run(self, entries: list[str], extra: list[str]) -> Closure:
        parts = [m.split(".") for m in extra]  # importing a.b runs a's __init__ first
        self.todo = [*entries, *(".".join(p[:i]) for p in parts for i in range(1, len(p) + 1))]
        while self.todo:
            module = self.todo.pop(0)
            if module in self.closure.modules:
                continue
            path = self.module_file(module)
            if path is None:
                continue
            rel = path.relative_to(self.root).as_posix()
            self.closure.modules[module] = rel
            if not path.is_file():
                continue
            uses, error = self.cache.imports(path, rel, module, is_entry=module in entries)
            if error:
                self.closure.unreadable.append(error)
            for use in uses:
                self.record(use)
        return self.closure

    def record(self, use: ImportUse) -> None:
        module, names, rel, line = use.module, use.names, use.file, use.line
        top = module.split(".", 1)[0]
        if not self.first_party(top):
            self.closure.uses.append(use)
            return
        if not (use.required or self.every_path):
            return
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # `import a.b.c` runs a, a.b and a.b.c
            prefix = ".".join(parts[:i])
            if self.module_file(prefix) is None:
                self.closure.missing_first_party.append((prefix, f"{rel}:{line}"))
                return
            self.todo.append(prefix)
        for name in names:  # `from library import train_util` names a submodule
            if self.module_file(f"{module}.{name}") is not None:
                self.todo.append(f"{module}.{name}")


def arg_imports(ctx: Context, root: Path) -> tuple[list[str], list[ImportUse], list[str]]:
    """Modules the training arguments make sd-scripts import at run time.

    Returns first-party modules to scan, third-party imports (required), and notes for the report.
    """
    try:
        args = train_args(ctx)
    except CheckFailed as exc:
        note = f"training arguments not read ({exc.summary}); only the entry script's own imports are checked"
        return [DEFAULT_NETWORK_MODULE], [], [note]
    first: list[str] = []
    uses: list[ImportUse] = []

    def need(module: str, arg: str, names: tuple[str, ...] = ()) -> None:
        if first_party(root, module.split(".")[0]):
            first.append(module)
        else:
            value = args.get(arg)
            place = args.place(arg) + ("" if value in (None, True) else f" = {value}")
            uses.append(ImportUse(module, names, place, 0))

    # train_network.py: importlib.import_module(args.network_module)
    network = args.get("network_module")
    need(network if isinstance(network, str) and network else DEFAULT_NETWORK_MODULE, "network_module")
    # library/train_util.py get_optimizer / get_scheduler_fix: `module.Class` names are imported by module
    for arg in ("optimizer_type", "lr_scheduler_type"):
        value = args.get(arg)
        if isinstance(value, str) and "." in value:
            module, _, cls = value.rpartition(".")
            need(module, arg, (cls,))
    optimizer = args.get("optimizer_type")
    if isinstance(optimizer, str) and "." not in optimizer and optimizer_module(optimizer):
        need(optimizer_module(optimizer) or "", "optimizer_type")
    # library/train_util.py prepare_accelerator: wandb for `--log_with wandb|all`; tensorboard (accelerate's
    # TensorBoardTracker) for `--log_with tensorboard|all`, and by default when only --logging_dir is set
    log_with = args.get("log_with")
    if log_with in ("wandb", "all"):
        need("wandb", "log_with")
    if log_with in ("tensorboard", "all") or (log_with is None and args.get("logging_dir")):
        need("tensorboard", "log_with" if log_with else "logging_dir")
    if args.on("xformers"):  # library/train_util.py replace_unet_modules: `import xformers.ops`
        need("xformers.ops", "xformers")
    if args.on("deepspeed"):  # library/deepspeed_utils.py prepare_deepspeed_plugin
        need("deepspeed", "deepspeed")
    return first, uses, []


def closure(ctx: Context) -> Closure | None:
    """The entry script's import closure (memoized); None when the sd-scripts tree or script is missing."""
    def compute() -> Closure | None:
        root = ctx.target.sd_scripts
        if root is None or not (root / ctx.target.script).is_file():
            return None
        entry = Path(ctx.target.script).with_suffix("").as_posix().replace("/", ".")
        extra, uses, notes = arg_imports(ctx, root)
        cache = ScanCache(root)
        found = _Scanner(root, cache).run([entry], extra)
        cache.save()
        found.uses += uses
        found.unreadable += notes
        return found
    return ctx.memo("deps:closure", compute)


def tree_imports(ctx: Context) -> dict[str, str]:
    """Every top-level module outside the checkout that sd-scripts' scripts import on any path (other
    scripts, other options), with the first place that imports it. Empty without a tree (memoized).

    The scripts are the .py files at the tree's root (trainers, inference); tools/ and finetune/ (conversion,
    captioning) are followed only where a script imports them.
    """
    def compute() -> dict[str, str]:
        root = ctx.target.sd_scripts
        if root is None or not root.is_dir():
            return {}
        scripts = sorted(p.stem for p in root.glob("*.py") if p.name != "setup.py")  # setup.py packages it
        cache = ScanCache(root)
        found = _Scanner(root, cache, every_path=True).run(scripts, [])
        cache.save()
        places: dict[str, str] = {}
        for use in found.uses:
            places.setdefault(use.top, use.place)
        return {**OPTION_ONLY_IMPORTS, **places}
    return ctx.memo("deps:tree_imports", compute)


def resolve(ctx: Context) -> Resolution | None:
    """Ask the training interpreter, in one probe, which names are stdlib and where the others resolve."""
    found = closure(ctx)
    if found is None:
        return None
    names = sorted({use.top for use in found.uses})
    answer = ctx.probe("deps:specs", program("find_specs"), {"names": names}, timeout=60)
    assert answer is not None
    return Resolution(set(answer.get("stdlib", [])), answer.get("specs", {}))


def deep_targets(ctx: Context) -> tuple[list[str], list[tuple[str, str]]]:
    """For the deep import (lorasetup.sd.stackprobe): the required third-party top-level modules of the
    closure, and each (module, name) of its required `from X import Y` statements on them.

    `name` may be an attribute or a submodule (`from X import Y` semantics). Empty without a tree.
    """
    def compute() -> tuple[list[str], list[tuple[str, str]]]:
        found = closure(ctx)
        if found is None:
            return [], []
        try:
            resolution = resolve(ctx)
            stdlib = resolution.stdlib if resolution else set()
        except ProbeError:  # the deep probe will report the broken interpreter itself
            stdlib = set(sys.stdlib_module_names)
        required = [u for u in found.uses if u.required and u.top not in stdlib]
        modules = sorted({u.top for u in required})
        pairs = {(u.module, name) for u in required for name in u.names}
        # `import a.b.c` must find the submodule too: the same as `from a.b import c`
        pairs |= {(u.module.rpartition(".")[0], u.module.rpartition(".")[2])
                  for u in required if not u.names and "." in u.module}
        return modules, sorted(pairs)
    return ctx.memo("deps:deep_targets", compute)


def dist_for(module: str) -> str | None:
    """The distribution name lorasetup's table (sdfacts.MODULE_TO_DIST) gives a module, if it knows one."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        hit = MODULE_TO_DIST.get(".".join(parts[:i]))
        if hit:
            return hit
    return None
