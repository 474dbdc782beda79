"""Programs that run in the training interpreter (through lorasetup.engine.probe), one module file each.

The training venv does not have lorasetup installed, so each file imports only the standard library at module
level (torch, accelerate and the run's modules are imported inside its functions, which is the point of a
probe) and keeps to syntax that old interpreters parse. Each defines `main(params, checkpoint) -> dict`.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def program(name: str) -> Path:
    """The file of one probe program: `program("stack")` -> .../probe_programs/stack.py."""
    path = FOLDER / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no probe program {name!r} in {FOLDER}")
    return path
