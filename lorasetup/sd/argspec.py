"""The argparse options of an sd-scripts entry script, read statically from its source.

The entry script's parser is built by `setup_parser()` (or its `__main__` block) calling
`parser.add_argument(...)` and first-party helpers such as `train_util.add_training_arguments(parser, True)`.
We interpret that code over the AST: follow every call that receives the parser (or returns it, like
`train_network.setup_parser()`) into the module that defines it, bind the call's constant arguments, and take
the branch an `if support_dreambooth:` selects. Nothing is imported and `--help` is never run, so a broken
training venv cannot stop this. The result is cached per checkout commit and file stats.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine.files import DATA_LIMIT, FileProblem, read_bytes, read_json, read_source, resolved
from lorasetup.engine.result import CheckFailed

CACHE_VERSION = 1
_MAX_DEPTH = 12


class ArgSpecError(CheckFailed):
    """The entry script's options cannot be read (missing script, no parser found)."""


@dataclass(frozen=True)
class Option:
    """One argparse option as declared in the source."""

    dest: str
    flags: tuple[str, ...]
    action: str = "store"        # store, store_true, store_false, store_const, append, count, ...
    type: str | None = None      # int, float, str, path, bool, or the name of a custom callable
    nargs: str | int | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = None
    default_src: str | None = None  # the default's source text when it is not a literal
    required: bool = False
    suppressed: bool = False     # help=argparse.SUPPRESS: hidden from --help
    where: str = ""              # `library/train_util.py:3981`

    @property
    def takes_value(self) -> bool:
        return self.action in ("store", "append", "extend")

    @property
    def is_list(self) -> bool:
        """The parsed value is a list (nargs `*`, `+`, N, or an append action)."""
        return self.action in ("append", "extend") or self.nargs in ("*", "+") or isinstance(self.nargs, int)

    def describe(self) -> str:
        """`int`, `one of no|fp16|bf16`, `list of str`, `flag (true/false)`."""
        if self.action in ("store_true", "store_false"):
            return "true or false"
        base = self.type or "str"
        if self.choices is not None:
            base = "one of " + ", ".join("none" if c is None else str(c) for c in self.choices)
        return f"a list of {base}" if self.is_list else base

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = list(self.flags)
        out["choices"] = None if self.choices is None else list(self.choices)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Option:
        raw = dict(raw)
        raw["flags"] = tuple(raw["flags"])
        raw["choices"] = None if raw.get("choices") is None else tuple(raw["choices"])
        return cls(**raw)


@dataclass
class ArgSpec:
    """All options of one entry script."""

    script: str
    options: dict[str, Option]
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # relpath -> (mtime_ns, size)
    commit: str | None = None
    unresolved: list[str] = field(default_factory=list)  # add_argument calls whose flags are not constants
    from_cache: bool = False

    def __contains__(self, dest: str) -> bool:
        return dest in self.options

    def __len__(self) -> int:
        return len(self.options)

    def get(self, dest: str) -> Option | None:
        return self.options.get(dest)

    @property
    def flags(self) -> dict[str, Option]:
        return {flag: opt for opt in self.options.values() for flag in opt.flags}

    def match_flag(self, flag: str) -> list[Option]:
        """What argparse makes of `flag`: the exact option, else every option it abbreviates
        (argparse accepts a unique prefix; several matches are an "ambiguous option" error)."""
        flags = self.flags
        if flag in flags:
            return [flags[flag]]
        if not flag.startswith("--"):
            return []
        seen: dict[str, Option] = {}
        for name, opt in flags.items():
            if name.startswith("--") and name.startswith(flag):
                seen.setdefault(opt.dest, opt)
        return list(seen.values())

    def clear_suggestion(self, name: str) -> str | None:
        """The one option a misspelt name plainly means (close enough, and no second candidate), for a fix
        that renames it; None when that is not clear."""
        key = name.lstrip("-").replace("-", "_")
        if key in self.options:
            return key if key != name.lstrip("-") else None
        close = difflib.get_close_matches(key, list(self.options), n=2, cutoff=0.8)
        return close[0] if len(close) == 1 else None

    def suggest(self, name: str) -> str | None:
        """The closest option name (dest form) to a misspelt one."""
        key = name.lstrip("-").replace("-", "_")
        close = difflib.get_close_matches(key, list(self.options), n=1, cutoff=0.6)
        if close:
            return close[0]
        contained = [d for d in self.options if key and (key in d or d in key) and len(key) > 3]
        return min(contained, key=len) if contained else None


# --- the AST interpreter ------------------------------------------------------------------------------

class _Parser:
    """Marker for a value that is (an alias of) the argparse parser or one of its groups."""


_PARSER = _Parser()
_UNKNOWN = object()


@dataclass
class _Module:
    name: str
    path: Path
    rel: str
    tree: ast.Module
    imports: dict[str, str]     # local name -> dotted target (module or module.attr)
    functions: dict[str, ast.FunctionDef]
    constants: dict[str, Any]


class _Extractor:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: dict[str, _Module | None] = {}
        self.options: dict[str, Option] = {}
        self.unresolved: list[str] = []
        self.stack: list[tuple[str, str]] = []

    # modules
    def module_file(self, dotted: str) -> Path | None:
        base = self.root.joinpath(*dotted.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def load(self, dotted: str) -> _Module | None:
        if dotted in self.modules:
            return self.modules[dotted]
        path = self.module_file(dotted)
        module = None
        if path is not None:
            try:
                with warnings.catch_warnings():  # sd-scripts' invalid escapes must not print warnings here
                    warnings.simplefilter("ignore")
                    tree = ast.parse(read_bytes(path), filename=str(path))
            except (SyntaxError, ValueError, FileProblem):
                tree = None
            if tree is not None:
                module = self._index(dotted, path, tree)
        self.modules[dotted] = module
        return module

    def _index(self, dotted: str, path: Path, tree: ast.Module) -> _Module:
        package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
        imports: dict[str, str] = {}
        functions: dict[str, ast.FunctionDef] = {}
        constants: dict[str, Any] = {}
        for node in _top_level(tree.body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        imports[alias.asname] = alias.name
                    else:
                        head = alias.name.split(".")[0]
                        imports[head] = head
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                    base = ".".join(p for p in (*parts, base) if p)
                for alias in node.names:
                    if alias.name != "*":
                        imports[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
            elif isinstance(node, ast.FunctionDef):
                functions[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    constants[node.targets[0].id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
        rel = path.relative_to(self.root).as_posix()
        return _Module(dotted, path, rel, tree, imports, functions, constants)

    def resolve_function(self, module: _Module, func: ast.expr) -> tuple[_Module, ast.FunctionDef] | None:
        """The first-party function a call refers to: local def, imported name, or `module.attr` chain."""
        dotted = _dotted(func)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if not rest and head in module.functions:
            return module, module.functions[head]
        if head not in module.imports:
            return None
        full = module.imports[head] + ("." + rest if rest else "")
        mod_name, _, attr = full.rpartition(".")
        while mod_name:
            target = self.load(mod_name)
            if target is not None:
                if "." not in attr and attr in target.functions:
                    return target, target.functions[attr]
                if "." not in attr and attr in target.imports:  # re-exported name
                    return self.resolve_function(target, ast.Name(attr))
                return None
            mod_name, _, prefix = mod_name.rpartition(".")
            attr = f"{prefix}.{attr}"
        return None

    # interpretation
    def run_entry(self, module: _Module) -> None:
        main = [n for n in module.tree.body if isinstance(n, ast.If) and _is_main_guard(n.test)]
        if main:
            self.exec_block(module, main[0].body, {})
        if not self.options and "setup_parser" in module.functions:
            self.call_function(module, module.functions["setup_parser"], [], {})

    def call_function(self, module: _Module, fn: ast.FunctionDef, args: list[Any], kwargs: dict[str, Any]) -> Any:
        key = (module.name, fn.name)
        if key in self.stack or len(self.stack) >= _MAX_DEPTH:
            return _UNKNOWN
        env: dict[str, Any] = {}
        params = fn.args.posonlyargs + fn.args.args
        defaults = [None] * (len(params) - len(fn.args.defaults)) + list(fn.args.defaults)
        for i, (param, default) in enumerate(zip(params, defaults)):
            if i < len(args):
                env[param.arg] = args[i]
            elif param.arg in kwargs:
                env[param.arg] = kwargs[param.arg]
            elif default is not None:
                env[param.arg] = self.eval(module, default, {})
            else:
                env[param.arg] = _UNKNOWN
        for param, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
            env[param.arg] = kwargs.get(param.arg, self.eval(module, default, {}) if default is not None else _UNKNOWN)
        self.stack.append(key)
        try:
            return self.exec_block(module, fn.body, env)
        finally:
            self.stack.pop()

    def exec_block(self, module: _Module, body: list[ast.stmt], env: dict[str, Any]) -> Any:
        """Run statements; returns the value of a `return` reached (or _UNKNOWN)."""
        returned: Any = _UNKNOWN
        for stmt in body:
            if isinstance(stmt, ast.Return):
                return self.eval(module, stmt.value, env) if stmt.value is not None else None
            if self.exec_stmt(module, stmt, env) is _PARSER:
                returned = _PARSER
        return returned

    def exec_stmt(self, module: _Module, stmt: ast.stmt, env: dict[str, Any]) -> Any:
        """One statement other than `return`; _PARSER when a branch of it returned the parser."""
        if isinstance(stmt, ast.Assign):
            value = self.eval(module, stmt.value, env)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            env[stmt.target.id] = self.eval(module, stmt.value, env)
        elif isinstance(stmt, ast.Expr):
            self.eval(module, stmt.value, env)
        elif isinstance(stmt, ast.If):
            return self.exec_if(module, stmt, env)
        elif isinstance(stmt, ast.For):
            self.exec_for(module, stmt, env)
        elif isinstance(stmt, (ast.With, ast.While)):
            self.exec_block(module, stmt.body, env)
        elif isinstance(stmt, ast.Try):
            self.exec_block(module, stmt.body + stmt.orelse + stmt.finalbody, env)
        return _UNKNOWN

    def exec_if(self, module: _Module, stmt: ast.If, env: dict[str, Any]) -> Any:
        """The branch the test selects, or both when it cannot be evaluated."""
        test = self.eval(module, stmt.test, env)
        branches = [stmt.body, stmt.orelse] if test is _UNKNOWN else [stmt.body if test else stmt.orelse]
        returned = [self.exec_block(module, branch, env) for branch in branches]
        return _PARSER if _PARSER in returned else _UNKNOWN

    def exec_for(self, module: _Module, stmt: ast.For, env: dict[str, Any]) -> None:
        """A loop over constants binds each item; any other loop runs its body once."""
        items = self.eval(module, stmt.iter, env)
        if isinstance(items, (list, tuple)) and isinstance(stmt.target, ast.Name):
            for item in items:
                env[stmt.target.id] = item
                self.exec_block(module, stmt.body, env)
        else:
            self.exec_block(module, stmt.body, env)

    def eval(self, module: _Module, node: ast.expr | None, env: dict[str, Any]) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            return module.constants.get(node.id, _UNKNOWN)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.eval(module, e, env) for e in node.elts]
            return _UNKNOWN if any(i is _UNKNOWN for i in items) else items
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            value = self.eval(module, node.operand, env)
            return _UNKNOWN if value is _UNKNOWN or value is _PARSER else not value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self.eval(module, node.operand, env)
            return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else _UNKNOWN
        if isinstance(node, ast.BoolOp):
            return self._boolop(module, node, env)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return self._compare(node.ops[0], self.eval(module, node.left, env),
                                 self.eval(module, node.comparators[0], env))
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                part = self.eval(module, value.value if isinstance(value, ast.FormattedValue) else value, env)
                if part is _UNKNOWN or part is _PARSER:
                    return _UNKNOWN
                parts.append(str(part))
            return "".join(parts)
        if isinstance(node, ast.Call):
            return self.call(module, node, env)
        return _UNKNOWN

    def _boolop(self, module: _Module, node: ast.BoolOp, env: dict[str, Any]) -> Any:
        values = [self.eval(module, v, env) for v in node.values]
        if any(v is _UNKNOWN or v is _PARSER for v in values):
            return _UNKNOWN
        if isinstance(node.op, ast.And):
            return all(values)
        return any(values)

    @staticmethod
    def _compare(op: ast.cmpop, left: Any, right: Any) -> Any:
        if left is _UNKNOWN or right is _UNKNOWN or left is _PARSER or right is _PARSER:
            return _UNKNOWN
        try:
            if isinstance(op, ast.Eq):
                return left == right
            if isinstance(op, ast.NotEq):
                return left != right
            if isinstance(op, ast.Is):
                return left is right
            if isinstance(op, ast.IsNot):
                return left is not right
            if isinstance(op, ast.In):
                return left in right
            if isinstance(op, ast.NotIn):
                return left not in right
        except TypeError:
            return _UNKNOWN
        return _UNKNOWN

    def call(self, module: _Module, node: ast.Call, env: dict[str, Any]) -> Any:
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = self.eval(module, func.value, env) if not _is_module_ref(module, func.value, env) else _UNKNOWN
            if owner is _PARSER:
                if func.attr == "add_argument":
                    self.add_argument(module, node, env)
                    return _UNKNOWN
                if func.attr in ("add_argument_group", "add_mutually_exclusive_group"):
                    return _PARSER
                if func.attr == "set_defaults":
                    self.set_defaults(module, node, env)
                return _UNKNOWN
        dotted = _dotted(func)
        if dotted is not None and dotted.split(".")[-1] == "ArgumentParser" and (
                dotted == "argparse.ArgumentParser"
                or module.imports.get(dotted.split(".")[0], "").startswith("argparse")):
            return _PARSER
        args = [self.eval(module, a, env) for a in node.args if not isinstance(a, ast.Starred)]
        kwargs = {k.arg: self.eval(module, k.value, env) for k in node.keywords if k.arg}
        resolved = self.resolve_function(module, func)
        if resolved is None:
            return _UNKNOWN
        target_module, fn = resolved
        if _PARSER in args or _PARSER in kwargs.values() or _builds_parser(fn):
            return self.call_function(target_module, fn, args, kwargs)
        return _UNKNOWN

    def add_argument(self, module: _Module, node: ast.Call, env: dict[str, Any]) -> None:
        where = f"{module.rel}:{node.lineno}"
        flags = [self.eval(module, a, env) for a in node.args]
        if not flags or any(not isinstance(f, str) for f in flags):
            self.unresolved.append(where)
            return
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        dest = self.eval(module, kw["dest"], env) if "dest" in kw else None
        if not isinstance(dest, str):
            longs = [f for f in flags if f.startswith("--")]
            dest = (longs[0] if longs else flags[0]).lstrip("-").replace("-", "_")
        action = "store"
        if "action" in kw:
            value = self.eval(module, kw["action"], env)
            action = value if isinstance(value, str) else (_dotted(kw["action"]) or "custom")
        default, default_src = None, None
        if "default" in kw:
            value = self.eval(module, kw["default"], env)
            if value is _UNKNOWN or value is _PARSER or not _jsonable(value):
                default_src = ast.unparse(kw["default"])
            else:
                default = value
        elif action == "store_true":
            default = False
        elif action == "store_false":
            default = True
        choices = self.eval(module, kw["choices"], env) if "choices" in kw else None
        nargs = self.eval(module, kw["nargs"], env) if "nargs" in kw else None
        required = self.eval(module, kw["required"], env) if "required" in kw else False
        suppressed = "help" in kw and (_dotted(kw["help"]) or "").endswith("SUPPRESS")
        self.options[dest] = Option(
            dest=dest,
            flags=tuple(flags),
            action=action,
            type=_type_name(module, kw.get("type")),
            nargs=nargs if isinstance(nargs, (str, int)) and not isinstance(nargs, bool) else None,
            choices=tuple(choices) if isinstance(choices, (list, tuple)) and _jsonable(list(choices)) else None,
            default=default,
            default_src=default_src,
            required=required is True,
            suppressed=suppressed,
            where=where,
        )

    def set_defaults(self, module: _Module, node: ast.Call, env: dict[str, Any]) -> None:
        for k in node.keywords:
            if k.arg and k.arg in self.options:
                value = self.eval(module, k.value, env)
                opt = self.options[k.arg]
                if value is not _UNKNOWN and _jsonable(value):
                    self.options[k.arg] = Option(**{**asdict(opt), "flags": opt.flags, "choices": opt.choices,
                                                    "default": value, "default_src": None})


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking inside top-level try/if blocks (guarded imports)."""
    for node in body:
        if isinstance(node, ast.Try):
            yield from _top_level(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        elif isinstance(node, ast.If) and not _is_main_guard(node.test):
            yield from _top_level(node.body + node.orelse)
        else:
            yield node


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_module_ref(module: _Module, node: ast.expr, env: dict[str, Any]) -> bool:
    dotted = _dotted(node)
    return dotted is not None and dotted.split(".")[0] in module.imports and dotted.split(".")[0] not in env


def _builds_parser(fn: ast.FunctionDef) -> bool:
    """A function such as `setup_parser()` that creates and returns a parser."""
    return any(isinstance(n, ast.Call) and (_dotted(n.func) or "").endswith("ArgumentParser")
               for n in ast.walk(fn)) or fn.name == "setup_parser"


def _type_name(module: _Module, node: ast.expr | None) -> str | None:
    if node is None:
        return None
    dotted = _dotted(node)
    if dotted is None:
        return "custom"
    last = dotted.split(".")[-1]
    if last in ("int", "float", "str", "bool"):
        return last
    if last in ("Path", "PurePath"):
        return "path"
    return last


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


# --- cache ---------------------------------------------------------------------------------------------

def git_head(tree: Path) -> str | None:
    """The commit checked out in `tree`, read from its own `.git` (a directory, or a file pointing at a
    submodule's git dir) without running git. None when the tree has no `.git` of its own."""
    dot_git = tree / ".git"
    try:
        if dot_git.is_file():
            text = read_source(dot_git).strip()
            if not text.startswith("gitdir:"):
                return None
            git_dir = resolved(tree / text.split(":", 1)[1].strip())
        elif dot_git.is_dir():
            git_dir = dot_git
        else:
            return None
        head = read_source(git_dir / "HEAD").strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = resolved(git_dir / read_source(git_dir / "commondir").strip())
        for base in (git_dir, common):
            if (base / ref).is_file():
                return read_source(base / ref).strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in read_source(packed, DATA_LIMIT).splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref:
                    return sha
    except (OSError, FileProblem):
        return None
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorasetup"


def _cache_file(root: Path, script: str) -> Path:
    digest = hashlib.sha1(f"{root.resolve()}\0{script}".encode()).hexdigest()[:16]
    return cache_dir() / f"argspec-{digest}.json"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read_cache(root: Path, script: str, commit: str | None) -> ArgSpec | None:
    try:
        raw = read_json(_cache_file(root, script), DATA_LIMIT)
        if raw.get("version") != CACHE_VERSION or raw.get("commit") != commit or raw.get("script") != script:
            return None
        files = {rel: tuple(stat) for rel, stat in raw["files"].items()}
        if any(_stat(root / rel) != stat for rel, stat in files.items()):
            return None
        options = {o["dest"]: Option.from_json(o) for o in raw["options"]}
        return ArgSpec(script, options, files, commit, list(raw.get("unresolved", [])), from_cache=True)
    except (OSError, FileProblem, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(root: Path, spec: ArgSpec) -> None:
    path = _cache_file(root, spec.script)
    payload = {"version": CACHE_VERSION, "root": str(root.resolve()), "script": spec.script, "commit": spec.commit,
               "files": {rel: list(stat) for rel, stat in spec.files.items()},
               "unresolved": spec.unresolved, "options": [o.to_json() for o in spec.options.values()]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed


# --- entry points --------------------------------------------------------------------------------------

def extract(root: Path, script: str) -> ArgSpec:
    """Read the options of `root/script` from source (no cache)."""
    path = root / script
    if not path.is_file():
        raise ArgSpecError(f"{path}: entry script not found", hint="check --script and the sd-scripts root")
    extractor = _Extractor(root)
    entry = extractor.load(Path(script).with_suffix("").as_posix().replace("/", "."))
    if entry is None:
        raise ArgSpecError(f"{path}: cannot parse the entry script",
                           hint=f"run `python -m py_compile {path}` to see the syntax error")
    extractor.run_entry(entry)
    if not extractor.options:
        raise ArgSpecError(f"{path}: no argparse options found (no setup_parser() or __main__ parser)",
                           hint="lorasetup reads the options from the script's source; is this a training script?")
    files = {m.rel: stat for m in extractor.modules.values() if m is not None
             for stat in [_stat(m.path)] if stat is not None}
    return ArgSpec(script, extractor.options, files, git_head(root), extractor.unresolved)


def load_argspec(root: Path, script: str, use_cache: bool = True) -> ArgSpec:
    """The options of `root/script`, from the cache when the checkout commit and every source file read
    are unchanged, else extracted and cached under $XDG_CACHE_HOME/lorasetup."""
    if use_cache:
        cached = _read_cache(root, script, git_head(root))
        if cached is not None:
            return cached
    spec = extract(root, script)
    if use_cache:
        _write_cache(root, spec)
    return spec
