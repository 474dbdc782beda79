"""Programs lorasetup runs in the TRAINING interpreter, by path: self-contained, standard library at module
level, never imported by lorasetup's own process (apart from a constant such as stack.SCHEMA_VERSION).

The training venv does not have lorasetup installed, so each file imports only the standard library at module
level (torch, accelerate and the run's modules are imported inside its functions, which is the point of it).
The probe programs (stack, optimizer, venv, find_specs) define `main(params, checkpoint) -> dict` and are run
through lorasetup.engine.probe (`run_program`, `Context.probe`); rendezvous.py is started on every rank by the
run's own `accelerate launch` (lorasetup.sd.distributed).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def program(name: str) -> Path:
    """The file of one program: `program("stack")` -> .../programs/stack.py."""
    path = FOLDER / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no probe program {name!r} in {FOLDER}")
    return path
