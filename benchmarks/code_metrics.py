"""Size figures of the lorasetup package, for the notes that report a refactoring's before and after.

    python benchmarks/code_metrics.py [ROOT ...]     # ROOT: a checkout (default: this one)

For each checkout, over ROOT/lorasetup: the longest function, how many functions are over 50 lines, how many
are above McCabe complexity 10 (and the most complex), the modules per folder and the lines of code. Function
lengths come from the AST (every def, nested ones included, from `def` to its last line); complexity is ruff's
own C901 figure (the rule the lint enforces), asked with max-complexity 0 so it reports every function. Two
checkouts side by side: `git worktree add /tmp/before <commit>`, then `code_metrics.py /tmp/before .`.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

LONG_LINES = 50
COMPLEX = 10
_C901 = re.compile(r"`(?P<name>[^`]+)` is too complex \((?P<score>\d+) > 0\)")


@dataclass
class Figures:
    """The figures of one checkout's package."""

    functions: list[tuple[int, str]]  # (lines, "path:name")
    complexity: list[tuple[int, str]]  # (McCabe complexity, "path:name")
    modules: Counter[str]  # folder -> .py files in it
    lines: int  # physical lines of every .py file
    code_lines: int  # lines that are neither blank nor only a comment


def function_lengths(package: Path) -> list[tuple[int, str]]:
    """Every function's length in lines, longest first."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                where = f"{path.relative_to(package.parent)}:{node.name}"
                found.append((node.end_lineno - node.lineno + 1, where))
    return sorted(found, reverse=True)


def complexities(package: Path) -> list[tuple[int, str]]:
    """Every function's McCabe complexity as ruff's C901 computes it, highest first."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "C901",
                           "--config", "lint.mccabe.max-complexity=0", "--output-format", "json", "--exit-zero",
                           str(package)], capture_output=True, text=True, check=True)
    found = []
    for item in json.loads(proc.stdout):
        match = _C901.search(item["message"])
        if match:
            where = f"{Path(item['filename']).relative_to(package.parent.resolve())}:{match['name']}"
            found.append((int(match["score"]), where))
    return sorted(found, reverse=True)


def measure(root: Path) -> Figures:
    """The figures of ROOT/lorasetup."""
    package = (root / "lorasetup").resolve()
    files = sorted(package.rglob("*.py"))
    texts = [path.read_text(encoding="utf-8") for path in files]
    code = sum(1 for text in texts for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    folders = Counter(str(path.parent.relative_to(package.parent)) for path in files)
    return Figures(function_lengths(package), complexities(package), folders,
                   sum(len(text.splitlines()) for text in texts), code)


def report(root: Path, figures: Figures) -> str:
    """The figures as a short block of text."""
    longest, where = figures.functions[0]
    worst, worst_where = figures.complexity[0]
    long_ones = [f for f in figures.functions if f[0] > LONG_LINES]
    complex_ones = [f for f in figures.complexity if f[0] > COMPLEX]
    lines = [f"{root}",
             f"  longest function: {longest} lines ({where})",
             f"  functions over {LONG_LINES} lines: {len(long_ones)} of {len(figures.functions)}",
             f"  functions above complexity {COMPLEX}: {len(complex_ones)} (highest {worst}: {worst_where})",
             f"  lines: {figures.lines} ({figures.code_lines} not blank or comment-only)",
             f"  modules: {sum(figures.modules.values())} in {len(figures.modules)} folders"]
    lines += [f"    {folder}/: {count}" for folder, count in sorted(figures.modules.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[Path(__file__).resolve().parent.parent])
    parser.add_argument("--list", action="store_true", help="also list the long and the complex functions")
    args = parser.parse_args(argv)
    for root in args.roots:
        figures = measure(root)
        print(report(root, figures))
        if args.list:
            for lines, where in figures.functions:
                if lines > LONG_LINES:
                    print(f"    {lines:4d} lines  {where}")
            for score, where in figures.complexity:
                if score > COMPLEX:
                    print(f"    complexity {score:3d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
