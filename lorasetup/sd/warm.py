"""A warm doctor: the answers of the training-interpreter probes that import torch, kept between runs.

An answer is reused only while everything it depends on is unchanged, read in milliseconds and never by
importing anything: the interpreter (path, size, mtime, pyvenv.cfg), every installed distribution on its
sys.path (dist-info / egg-info / .pth entries and their mtimes), the accelerate config's bytes, the environment
variables that change what torch and accelerate do, the sd-scripts files the deep import reads (the commit and
the stats of every .py file), the GPU inventory (driver version files, device nodes; the OS release on macOS),
the probe program itself and its parameters. Failing answers are never kept, entries expire after a day, and
`--fresh` always asks anew. A cache may only make things faster, never change a verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasetup import __version__
from lorasetup.engine.files import DATA_LIMIT, FileProblem, read_json, read_source
from lorasetup.engine.target import Target
from lorasetup.sd import accelconfig
from lorasetup.sd.argspec import cache_dir, git_head

TTL_S = 24 * 3600.0
ENV_PREFIXES = ("CUDA_", "HIP_", "ROCR_", "ROCM_", "ZE_", "PYTORCH_", "TORCH_", "ACCELERATE_", "HF_", "NCCL_",
                "MPS_", "XPU_", "ONEAPI_", "TRANSFORMERS_", "DIFFUSERS_", "BNB_", "XFORMERS_")
ENV_NAMES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_LIBRARY_PATH",
             "PATH", "XDG_CACHE_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "USE_LIBUV")
PACKAGE_SUFFIXES = (".dist-info", ".egg-info", ".pth", ".egg-link", ".egg")
GPU_FILES = ("/proc/driver/nvidia/version", "/sys/module/amdgpu/version", "/proc/driver/nvidia/gpus")
GPU_NODE_PREFIXES = ("nvidia", "kfd", "dxg")


def _sha(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:24]


def _stat_line(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}:absent"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def interpreter_part(python: Path) -> str:
    """The interpreter file (and what a venv's link points at) and the venv's pyvenv.cfg."""
    lines = [_stat_line(python), _stat_line(python.resolve())]
    cfg = python.parent.parent / "pyvenv.cfg"
    lines.append(_text(cfg) if cfg.is_file() else "no pyvenv.cfg")
    return _sha(lines)


def sys_path(python: Path, environ: Mapping[str, str]) -> list[str]:
    """The training interpreter's sys.path as its `site` builds it (a bare start: about 20 ms)."""
    try:
        out = subprocess.run([str(python), "-c", "import json, sys; print(json.dumps(sys.path))"],
                             capture_output=True, text=True, timeout=30, env=dict(environ),
                             stdin=subprocess.DEVNULL, check=False)
        return [p for p in json.loads(out.stdout.strip().splitlines()[-1]) if isinstance(p, str)]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return []


def packages_part(paths: Iterable[str]) -> str:
    """Every distribution on sys.path: a folder's listing of dist-info/egg-info/.pth entries with mtimes, and
    the folder's own mtime (a package added or removed at the top changes it)."""
    lines = []
    for entry in paths:
        if not entry:
            continue  # the working directory: a probe program runs by path, so it never imports from there
        folder = Path(entry)
        lines.append(_stat_line(folder))
        try:
            with os.scandir(folder) as it:
                found = sorted((e.name, e.stat().st_mtime_ns) for e in it if e.name.endswith(PACKAGE_SUFFIXES))
        except OSError:
            continue
        lines += [f"{name}:{mtime}" for name, mtime in found]
    return _sha(lines)


def environment_part(environ: Mapping[str, str]) -> str:
    keep = sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES)
    return _sha(f"{k}={v}" for k, v in keep)


def sd_scripts_part(tree: Path | None) -> str:
    """The commit, and every .py file's size and mtime (dirty files included) under the checkout."""
    if tree is None or not tree.is_dir():
        return "no checkout"
    lines = [str(git_head(tree))]
    for folder, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("venv", "__pycache__"))
        lines += [_stat_line(Path(folder) / f) for f in sorted(files) if f.endswith(".py")]
    return _sha(lines)


def gpu_part() -> str:
    """The GPU inventory as cheaply as the platform allows: driver files and device nodes; macOS release."""
    lines = [platform.system(), platform.release()]
    if sys.platform == "darwin":
        lines.append(platform.mac_ver()[0])
    for name in GPU_FILES:
        path = Path(name)
        if path.is_file():
            lines.append(_text(path))
        elif path.is_dir():
            lines += sorted(p.name for p in path.iterdir())
    try:
        lines += sorted(n for n in os.listdir("/dev") if n.startswith(GPU_NODE_PREFIXES))
    except OSError:
        pass
    return _sha(lines)


def accelerate_part(target: Target, environ: Mapping[str, str]) -> str:
    path = accelconfig.find_config(target, environ).path
    return _sha([str(path), _text(path)])


def _text(path: Path) -> str:
    """A file's text for a fingerprint; what cannot be read (absent, a pipe by that name) by its description,
    so the fingerprint never waits on a pipe."""
    try:
        return read_source(path)
    except FileProblem as exc:
        return exc.problem


@dataclass(frozen=True)
class Fingerprint:
    """What a probe's answer depends on, part by part (so a miss can say what changed)."""

    parts: dict[str, str]

    @property
    def digest(self) -> str:
        return _sha(f"{k}={v}" for k, v in sorted(self.parts.items()))

    def changed(self, old: Mapping[str, str]) -> list[str]:
        return sorted(k for k in set(self.parts) | set(old) if self.parts.get(k) != old.get(k))


def fingerprint(target: Target, program: Path, params: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> Fingerprint:
    env = os.environ if environ is None else environ
    python = target.python_exe
    return Fingerprint({
        "probe program": _sha([__version__, _text(program), json.dumps(params, sort_keys=True, default=str)]),
        "interpreter": interpreter_part(python),
        "installed packages": packages_part(sys_path(python, env)),
        "accelerate config": accelerate_part(target, env),
        "environment": environment_part(env),
        "sd-scripts files": sd_scripts_part(target.sd_scripts),
        "GPU inventory": gpu_part(),
    })


def _entry_path(key: str, target: Target) -> Path:
    name = _sha([key, str(target.python_exe), str(target.sd_scripts)])
    return cache_dir() / "probes" / f"{name}.json"


def load(key: str, target: Target, fp: Fingerprint, now: float | None = None) -> tuple[dict[str, Any] | None, str]:
    """The cached answer and why it is used, or None and why a fresh probe is needed."""
    path = _entry_path(key, target)
    try:
        entry = read_json(path, DATA_LIMIT)
    except FileProblem:
        return None, "no cached answer"
    if not isinstance(entry, dict):
        return None, "no cached answer"
    age = (now or time.time()) - float(entry.get("created", 0))
    if age > TTL_S or age < 0:
        return None, f"the cached answer is {age / 3600:.0f} h old (kept {TTL_S / 3600:.0f} h)"
    changed = fp.changed(entry.get("parts") or {})
    if changed:
        return None, "changed since the cached answer: " + ", ".join(changed)
    return entry.get("answer"), f"unchanged since {time.strftime('%H:%M:%S', time.localtime(entry['created']))}"


def store(key: str, target: Target, fp: Fingerprint, answer: dict[str, Any]) -> None:
    path = _entry_path(key, target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"created": time.time(), "parts": fp.parts, "answer": answer}, default=str))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def cached(key: str, target: Target, program: Path, params: Mapping[str, Any], compute: Callable[[], dict[str, Any]],
           keep: Callable[[dict[str, Any]], bool], fresh: bool = False,
           note: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`compute()`'s answer, from the cache while the fingerprint holds; a new answer is kept only if `keep`."""
    fp = fingerprint(target, program, params)
    answer, why = (None, "--fresh") if fresh else load(key, target, fp)
    if answer is not None:
        note(f"{key}: answer from the cache ({why})")
        return answer
    note(f"{key}: fresh probe ({why})")
    answer = compute()
    if keep(answer):
        store(key, target, fp, answer)
    else:
        note(f"{key}: answer not cached (it reports a failure)")
    return answer
