"""The probe programs (lorasetup/sd/programs/ and the entry that runs them) run in the user's training venv,
where lorasetup is not installed, and the venv program must answer even on a Python too old for sd-scripts."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from lorasetup.engine.probe import ENTRY, run_program
from lorasetup.sd.programs import FOLDER, program

PROGRAMS = sorted(p for p in FOLDER.glob("*.py") if p.name != "__init__.py")
OLDEST = (3, 6)  # what the entry and the venv program parse on: they report "this Python is too old"
OLD_PYTHONS = sorted(Path.home().glob(".pyenv/versions/3.[67].*/bin/python"))


def module_level_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", [ENTRY, *PROGRAMS], ids=lambda p: p.name)
def test_probe_files_import_only_the_standard_library_at_module_level(path: Path):
    tree = ast.parse(path.read_text())
    assert module_level_imports(tree) - {"__future__"} <= set(sys.stdlib_module_names), path.name
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{path.name}: no main()"


@pytest.mark.parametrize("path", [ENTRY, program("venv"), program("find_specs")], ids=lambda p: p.name)
def test_entry_and_venv_programs_parse_on_old_pythons(path: Path):
    tree = ast.parse(path.read_text(), feature_version=OLDEST)
    assert "__future__" not in module_level_imports(tree)  # Python 3.6 has no `annotations` future


@pytest.mark.skipif(not OLD_PYTHONS, reason="needs a Python 3.6 or 3.7 (pyenv) on this machine")
@pytest.mark.parametrize("python", OLD_PYTHONS, ids=lambda p: p.parts[-3])
def test_venv_program_answers_on_a_real_old_python(python: Path):
    answer = run_program(python, program("venv"))
    assert answer["python"]["version"] == python.parts[-3]
    assert answer["markers"]["python_version"] == ".".join(python.parts[-3].split(".")[:2])


def test_an_unknown_program_is_named():
    with pytest.raises(FileNotFoundError, match="no probe program 'nope'"):
        program("nope")
