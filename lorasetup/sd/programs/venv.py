"""The training interpreter's environment, for the deps gate: its version, the marker environment of the
requirement files, its paths, the machine's GPU tools (what kohya_ss's setup looks at), every installed
distribution with the top-level names it provides (the first on sys.path wins, as for imports) and where
`library` (sd-scripts' own package) resolves.

params: none. answer: python, markers, site, machine, dists, library.

Standard library only, and no syntax or annotation newer than Python 3.6: this program is what says "this
Python is too old" (generic annotations are quoted, there is no `from __future__ import annotations`).
"""

import importlib.util
import inspect
import os
import platform
import re
import shutil
import site
import sys
from collections.abc import Callable
from typing import Any


def fmt(v: Any) -> str:
    """A version_info as PEP 508 writes it: 3.10.14, 3.13.0rc1."""
    s = f"{v.major}.{v.minor}.{v.micro}"
    return s if v.releaselevel == "final" else s + v.releaselevel[0] + str(v.serial)


def markers() -> "dict[str, str]":
    return {
        "implementation_name": sys.implementation.name, "implementation_version": fmt(sys.implementation.version),
        "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
        "platform_system": platform.system(), "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}


def machine() -> "dict[str, bool]":
    """What kohya_ss's setup.sh looks at to pick its platform requirement file."""
    return {"nvidia_smi": bool(shutil.which("nvidia-smi")),
            "rocm": bool(shutil.which("rocminfo")) or os.path.isfile("/opt/rocm/bin/rocminfo"),
            "runpod": bool(os.environ.get("RUNPOD_POD_ID") or os.environ.get("RUNPOD_API_KEY"))}


def top_level(d: Any) -> "list[str]":
    """The top-level import names a distribution provides: importlib.metadata.packages_distributions' rule on
    Python 3.11+ (3.10 reads only top_level.txt): top_level.txt, else the top-level names of the files RECORD
    lists (read as text: Distribution.files builds an object per file, three times slower over a venv of torch)."""
    try:
        declared = (d.read_text("top_level.txt") or "").split()
        record = "" if declared else (d.read_text("RECORD") or "")
    except Exception:
        return []
    if declared:
        return sorted(set(declared))
    names = set()
    for line in record.splitlines():
        path = line.rsplit(",", 2)[0].strip('"')
        head, sep, _ = path.partition("/")
        names.add(head if sep else (inspect.getmodulename(head) or head))
    return sorted(n for n in names if n and "." not in n and n != "__pycache__")


def dists() -> "dict[str, dict[str, Any]]":
    """Installed distributions by normalized name; `library` with its direct_url.json (an editable install)."""
    try:
        import importlib.metadata as md  # Python 3.8+; older ones fail deps.interpreter's version check anyway
    except ImportError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for d in md.distributions():
        try:
            name, version = d.metadata["Name"], d.version
        except Exception:
            continue
        key = "-".join(filter(None, re.split(r"[-_.]+", (name or "").lower())))
        if key and key not in found:  # the first on sys.path wins, as for imports
            found[key] = {"name": name, "version": version, "path": str(getattr(d, "_path", "")), "top": top_level(d)}
            if key == "library":
                found[key]["direct_url"] = d.read_text("direct_url.json")
    return found


def library() -> "dict[str, Any] | None":
    try:
        spec = importlib.util.find_spec("library")
    except Exception as exc:
        return {"error": type(exc).__name__ + ": " + str(exc)}
    if spec is None:
        return None
    return {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}


def main(params: "dict[str, Any]", checkpoint: "Callable[[dict[str, Any]], None]") -> "dict[str, Any]":
    return {"python": {"version": fmt(sys.version_info), "executable": sys.executable, "prefix": sys.prefix,
                       "base_prefix": getattr(sys, "base_prefix", sys.prefix)},
            "markers": markers(),
            "site": {"user_site": site.getusersitepackages() if site.ENABLE_USER_SITE else None,
                     "path": sys.path, "pythonpath": os.environ.get("PYTHONPATH", "")},
            "machine": machine(), "dists": dists(), "library": library()}
