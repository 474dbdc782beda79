"""What the training interpreter says about itself: version, marker environment, paths, installed
distributions and the machine's GPU tools, read in ONE probe; and the venv's own pyvenv.cfg."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.files import FileProblem, read_source
from lorasetup.sd.programs import program


def env(ctx: Context) -> dict[str, Any]:
    """The training interpreter's version, marker environment, paths, installed distributions (each with the
    top-level import names it provides) and the machine facts kohya_ss's setup reads."""
    answer = ctx.probe("deps:env", program("venv"), timeout=60)
    assert answer is not None
    return answer


def python_cmd(ctx: Context) -> str:
    return shlex.quote(str(ctx.target.python_exe))


def venv_config(python: Path) -> Path | None:
    for folder in (python.parent.parent, python.parent):  # bin/python or Scripts/python.exe
        if (folder / "pyvenv.cfg").is_file():
            return folder / "pyvenv.cfg"
    return None


def read_cfg(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = read_source(path)
    except FileProblem:  # a pyvenv.cfg that cannot be read: deps.interpreter's probe reports the venv
        return out
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip().lower()] = value.strip()
    return out

