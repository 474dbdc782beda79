"""Where each top-level module name of the run's import closure resolves in the training interpreter, in one
process (the deps gate's deps.imports): which names are the standard library, and for the others
importlib.util.find_spec's origin and package folders, or its error.

params: {"names": [top-level module names]}. answer: stdlib (sorted names), specs (name -> None | {origin,
locations} | {error}).

Standard library only; Python 3.6's syntax, like venv.py.
"""

import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def spec_of(name: str) -> "dict[str, Any] | None":
    try:
        spec = importlib.util.find_spec(name)
    except Exception as exc:
        return {"error": type(exc).__name__ + ": " + str(exc)}
    return None if spec is None else {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}


def main(params: "dict[str, Any]", checkpoint: "Callable[[dict[str, Any]], None]") -> "dict[str, Any]":
    names = params["names"]
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    return {"stdlib": sorted(n for n in names if n in stdlib),
            "specs": {name: spec_of(name) for name in names if name not in stdlib}}
