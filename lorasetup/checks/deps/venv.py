"""What the training interpreter says about itself: version, marker environment, paths, installed
distributions and the machine's GPU tools, read in ONE probe; and the venv's own pyvenv.cfg."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context

ENV_PROBE = """
import inspect, os, platform, shutil, site, sys
import importlib.util
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]  # `python -c` puts the working directory first; a training run does not
def fmt(v):
    s = "%d.%d.%d" % (v.major, v.minor, v.micro)
    return s if v.releaselevel == "final" else s + v.releaselevel[0] + str(v.serial)
RESULT["python"] = {"version": fmt(sys.version_info), "executable": sys.executable, "prefix": sys.prefix,
                    "base_prefix": getattr(sys, "base_prefix", sys.prefix)}
RESULT["markers"] = {
    "implementation_name": sys.implementation.name, "implementation_version": fmt(sys.implementation.version),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}
RESULT["site"] = {"user_site": site.getusersitepackages() if site.ENABLE_USER_SITE else None,
                  "path": sys.path, "pythonpath": os.environ.get("PYTHONPATH", "")}
RESULT["machine"] = {  # what kohya_ss's setup.sh looks at to pick its platform requirement file
    "nvidia_smi": bool(shutil.which("nvidia-smi")),
    "rocm": bool(shutil.which("rocminfo")) or os.path.isfile("/opt/rocm/bin/rocminfo"),
    "runpod": bool(os.environ.get("RUNPOD_POD_ID") or os.environ.get("RUNPOD_API_KEY"))}
def top_level(d):
    # importlib.metadata.packages_distributions' rule on Python 3.11+ (3.10 reads only top_level.txt):
    # top_level.txt, else the top-level names of the files RECORD lists (read as text: Distribution.files
    # builds an object per file, three times slower over a venv of torch)
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
dists = {}
try:
    import importlib.metadata as md  # Python 3.8+; older ones fail deps.interpreter's version check anyway
except ImportError:
    md = None
for d in (md.distributions() if md else ()):
    try:
        name, version = d.metadata["Name"], d.version
    except Exception:
        continue
    key = "-".join(filter(None, __import__("re").split(r"[-_.]+", (name or "").lower())))
    if key and key not in dists:  # the first on sys.path wins, as for imports
        dists[key] = {"name": name, "version": version, "path": str(getattr(d, "_path", "")), "top": top_level(d)}
        if key == "library":
            dists[key]["direct_url"] = d.read_text("direct_url.json")
RESULT["dists"] = dists
try:
    spec = importlib.util.find_spec("library")
    RESULT["library"] = spec and {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}
except Exception as exc:
    RESULT["library"] = {"error": type(exc).__name__ + ": " + str(exc)}
"""


def env(ctx: Context) -> dict[str, Any]:
    """The training interpreter's version, marker environment, paths, installed distributions (each with the
    top-level import names it provides) and the machine facts kohya_ss's setup reads."""
    answer = ctx.probe("deps:env", ENV_PROBE, timeout=60)
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
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip().lower()] = value.strip()
    return out

