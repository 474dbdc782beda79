"""The package's layers point one way: engine <- sd-scripts knowledge <- gates <- front ends.

Read from the source with ast (every import, also those inside functions), so a hidden upward import or a cycle
fails here, not in a newcomer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lorasetup"
LAYERS = ("engine", "sd", "gates", "front")  # low to high
FRONT_ENDS = {"lorasetup.cli", "lorasetup.commands", "lorasetup.pytest_plugin", "lorasetup.envinfo",
              "lorasetup.initcmd", "lorasetup.initsetup"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in FRONT_ENDS:
        return "front"
    if module == "lorasetup":  # the package itself holds only __version__
        return "engine"
    if module.startswith("lorasetup.checks"):
        return "gates"
    kind = module.split(".")[1]
    assert kind in ("engine", "sd"), f"{module} is in no layer: put it under engine/, sd/ or checks/<gate>/"
    return kind


def gate_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "checks" else None


def imports(path: Path) -> set[str]:
    """Every lorasetup module `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lorasetup")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lorasetup") \
                and node.level == 0:
            for alias in node.names:  # `from lorasetup.sd import facts` imports the module lorasetup.sd.facts
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    """A module imports only its own layer or lower ones; a gate never imports another gate; a front end
    uses a gate only through its `checks` module (the registry's public functions)."""
    rank = LAYERS.index(layer(module))
    for target in sorted(GRAPH[module]):
        assert LAYERS.index(layer(target)) <= rank, f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        if layer(module) == "gates" and gate_of(module) and gate_of(target):
            assert gate_of(target) == gate_of(module), f"gate module {module} imports another gate's {target}"
        if layer(module) == "front" and gate_of(target):
            assert target.endswith(".checks"), f"front end {module} reaches into a gate's internals: {target}"


def test_no_import_cycle() -> None:
    """No chain of imports (module-level or inside functions) leads back to where it started."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt == node or nxt not in GRAPH:
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
