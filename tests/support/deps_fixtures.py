"""Real parts for the deps tests: tiny generated packages built into a wheelhouse with `pip wheel`, real
venvs (`python -m venv`), and an sd-scripts-like tree with the import shapes sd-scripts uses."""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from lorasetup.checks.deps.requirements import Machine
from lorasetup.engine.result import Result
from lorasetup.engine.target import Target
from tests.support.checks import run_checks
from tests.support.git import git, write_tree

# (distribution, import name, version, module body): stand-ins with sd-scripts' real names and pins
PACKAGES = [
    ("imagesize", "imagesize", "1.4.1", ""),
    ("imagesize", "imagesize", "1.3.0", ""),
    ("rich", "rich", "14.1.0", ""),
    ("toml", "toml", "0.10.2", "def loads(text):\n    return {}\n"),
    ("sentencepiece", "sentencepiece", "0.2.1", ""),
    ("altair", "altair", "4.2.2", ""),
    ("lion-pytorch", "lion_pytorch", "0.2.3", ""),
    ("schedulefree", "schedulefree", "1.4", ""),
    ("pytorch-optimizer", "pytorch_optimizer", "3.9.0", "class CAME:\n    pass\n"),
    ("prodigy-plus-schedule-free", "prodigyplus", "1.9.2", ""),
    ("prodigyopt", "prodigyopt", "1.1.2", ""),
    ("huggingface-hub", "huggingface_hub", "0.34.3", "class HfApi:\n    pass\n"),  # no cached_download
    ("diffusers", "diffusers", "0.20.0", "from huggingface_hub import cached_download\n"),  # the B4 skew
    ("accelerate", "accelerate", "1.6.0", "def main():\n    print('accelerate')\n"),  # has a console script
    ("accelerate", "accelerate", "1.11.0", "def main():\n    print('accelerate')\n"),
    # kohya_ss's GUI, logging and captioning pins
    ("gradio", "gradio", "6.17.3", ""),
    ("easygui", "easygui", "0.98.3", ""),
    ("wandb", "wandb", "0.18.0", ""),
    ("tensorboard", "tensorboard", "2.15.2", ""),
    ("tensorflow", "tensorflow", "2.15.0.post1", ""),
]
# A distribution whose import name is not its own and that ships no top_level.txt (as flit, hatchling and
# uv build them): only its RECORD tells that `import cpuinfo` comes from py-cpuinfo
RECORD_ONLY = ("py-cpuinfo", "cpuinfo", "9.0.0")
SCRIPTS = {"accelerate": '[project.scripts]\naccelerate = "accelerate:main"\n'}
NINE = ["imagesize", "rich", "sentencepiece", "altair", "lion_pytorch", "schedulefree", "pytorch_optimizer",
        "prodigyplus", "prodigyopt"]
NINE_PINS = ["imagesize==1.4.1", "rich==14.1.0", "sentencepiece==0.2.1", "altair==4.2.2", "lion-pytorch==0.2.3",
             "schedulefree==1.4", "pytorch-optimizer==3.9.0", "prodigy-plus-schedule-free==1.9.2",
             "prodigyopt==1.1.2"]


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_wheelhouse(work: Path) -> Path:
    """`pip wheel` over every generated package (offline: the dev venv's setuptools builds them); one run
    per batch, since pip resolves a batch together and two versions of one package conflict."""
    batches: list[list[Path]] = [[], []]
    for dist, module, version, body in PACKAGES:
        src = package_source(work / "src" / f"{dist}-{version}", dist, module, version, body, SCRIPTS.get(dist, ""))
        first = all(dist != other.name.rsplit("-", 1)[0] for other in batches[0])
        batches[0 if first else 1].append(src)
    wheels = work / "wheels"
    for sources in batches:
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "-w", wheels, *sources])
    record_only_wheel(wheels, *RECORD_ONLY)
    return wheels


def package_source(src: Path, dist: str, module: str, version: str, body: str = "", extra: str = "",
                   dependencies: tuple[str, ...] = ()) -> Path:
    """The source tree of a one-module package setuptools builds offline; `extra` is appended to its pyproject."""
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(f"__version__ = {version!r}\n{body}")
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "{version}"
        dependencies = {list(dependencies)!r}
        [tool.setuptools]
        packages = ["{module}"]
        """).replace("'", '"') + extra)
    return src


def record_only_wheel(wheels: Path, dist: str, module: str, version: str) -> Path:
    """A wheel written by hand with METADATA, WHEEL and RECORD only (no top_level.txt)."""
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path = wheels / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    _zip_wheel(path, info, files)
    return path


def _zip_wheel(path: Path, info: str, files: dict[str, str]) -> None:
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            zf.writestr(name, data)
            record.append(f"{name},sha256={digest},{len(data)}")
        zf.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")


def make_venv(path: Path, with_pip: bool) -> Path:
    """A real venv; returns its python."""
    run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), path])
    return venv_python(path)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def copy_venv(template: Path, dest: Path) -> Path:
    """A copy of a venv (its python links to the same base interpreter; `python -m pip` works)."""
    shutil.copytree(template, dest, symlinks=True)
    return venv_python(dest)


def pip_install(python: Path, wheels: Path, *specs: str) -> None:
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--find-links", wheels, *specs])


def installed(python: Path) -> dict[str, str]:
    """name -> version of every distribution in the interpreter, read there with importlib.metadata."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    out = run([python, "-I", "-c", code]).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def site_packages(python: Path) -> Path:
    return Path(run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


ENTRY = """\
import os
import sys

import toml
from library import train_util
import library.config_util as config_util


def main():
    import lazy_only_package  # only runs inside main(): deferred, not required at import


if __name__ == "__main__":
    main()
"""
TRAIN_UTIL = """\
import json
{imports}
from .utils import helper

try:
    import pillow_avif  # optional: sd-scripts adds .avif when it imports
except ImportError:
    pass


def get_optimizer(args):
    optimizer_type = args.optimizer_type.lower()
    if optimizer_type == "prodigy":
        try:
            import prodigyopt
        except ImportError:
            raise ImportError("No prodigyopt")
    return None
"""


# sd-scripts installs itself with setuptools (`-e .`); a venv made offline has only the setuptools Python
# bundles, which cannot build editable wheels without `wheel`. This in-tree PEP 660 backend builds the same
# result (a .pth naming the checkout) so real pip can run the fix's `pip install --no-deps -e <tree>`.
EDITABLE_BACKEND = """\
import base64, hashlib, os, zipfile

DIST = "library-0.0.0.dist-info"


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {"__editable__.library.pth": root + "\\n",
             DIST + "/METADATA": "Metadata-Version: 2.1\\nName: library\\nVersion: 0.0.0\\n",
             DIST + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: fixture\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    name = "library-0.0.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            zf.writestr(path, data)
            record.append(f"{path},sha256={digest},{len(data)}")
        zf.writestr(DIST + "/RECORD", "\\n".join(record + [DIST + "/RECORD,,"]) + "\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("this fixture checkout installs only as editable (-e)")


def build_sdist(sdist_directory, config_settings=None):
    raise RuntimeError("this fixture checkout installs only as editable (-e)")
"""
EDITABLE_PYPROJECT = """\
[build-system]
requires = []
build-backend = "editable_backend"
backend-path = ["_build"]
"""


def make_tree(root: Path, imports: list[str], requirements: list[str], extra: dict[str, str] | None = None
              ) -> Path:
    """An sd-scripts-like checkout: entry script, library/ (relative and absolute imports, an optional
    import, an optimizer-driven import), networks/lora.py, requirements.txt ending in `-e .`, and a way to
    install it editable."""
    files = {
        "train_network.py": ENTRY,
        "library/__init__.py": "",
        "library/train_util.py": TRAIN_UTIL.format(imports="\n".join(imports)),
        "library/utils.py": "def helper():\n    return 1\n",
        "library/config_util.py": "from library.utils import helper\n",
        "networks/__init__.py": "",
        "networks/lora.py": "import math\n",
        "requirements.txt": "\n".join([*requirements, "-e ."]) + "\n",
        "pyproject.toml": EDITABLE_PYPROJECT,
        "_build/editable_backend.py": EDITABLE_BACKEND,
        **(extra or {}),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def target(tree: Path, python: Path, args: list[str] | tuple[str, ...] = (), **fields: Any) -> Target:
    return Target(kohya_root=tree, python=python, train_args=list(args), **fields)


STATIC = ("deps.interpreter", "deps.imports", "deps.versions", "deps.library", "deps.isolation")


def run_deps(tree: Path | Target, python: Path | None = None, args: list[str] | tuple[str, ...] = (),
             pip_args: list[str] | None = None, only: tuple[str, ...] = STATIC, all_pins: bool = False,
             **fields: Any) -> dict[str, Result]:
    """Run the deps gate (and what it requires) through the real runner; results by check id. `tree` may be a
    ready Target (then `python`, `args` and `fields` are not used)."""
    chosen = tree if isinstance(tree, Target) else target(tree, python or Path(sys.executable), args, **fields)
    return run_checks(chosen, only, pip_args=pip_args, all_pins=all_pins)


def library_points_at(python: Path, tree: Path) -> None:
    """What a legacy editable install (`setup.py develop`) leaves: a .pth naming the checkout."""
    (site_packages(python) / "library-dev.pth").write_text(f"{tree}\n")


def this_machine() -> Machine:
    """What the env probe reports for this machine (kohya_ss's setup reads the same)."""
    rocm = bool(shutil.which("rocminfo")) or os.path.isfile("/opt/rocm/bin/rocminfo")
    return Machine(sys.platform, platform.machine(), nvidia_smi=bool(shutil.which("nvidia-smi")), rocm=rocm,
                   runpod=bool(os.environ.get("RUNPOD_POD_ID") or os.environ.get("RUNPOD_API_KEY")))


# kohya_ss's requirement files as 45088f04 writes them (trimmed to packages the wheelhouse stands in for):
# comments, an unpinned line, `-e ./sd-scripts`, platform files with a PyTorch `--extra-index-url` and
# CUDA/ROCm local-label pins of torch that `-r` the base file, and a macOS file on the nightly CPU index.
KOHYA_REQUIREMENTS = {
    "requirements.txt": """\
py-cpuinfo
# TF/ONNX stack and scipy 1.11 need NumPy 1.x (#3422 / #3577 Phase 3)
accelerate==1.6.0
altair==4.2.2
easygui==0.98.3
gradio==6.17.3
imagesize==1.4.1
rich>=13.7.1
toml==0.10.2
wandb==0.18.0
# for kohya_ss sd-scripts library
-e ./sd-scripts
""",
    "requirements_linux.txt": """\
# Custom index URL for specific packages
--extra-index-url https://download.pytorch.org/whl/cu128

torch==2.7.0+cu128
torchvision==0.22.0+cu128
xformers>=0.0.30

tensorboard==2.15.2
tensorflow==2.15.0.post1

-r requirements.txt
""",
    "requirements_linux_rocm.txt": """\
# Custom index URL for specific packages
--extra-index-url https://download.pytorch.org/whl/rocm6.3
--find-links https://repo.radeon.com/rocm/manylinux/rocm-rel-6.4.1

torch==2.7.1+rocm6.3
torchvision==0.22.1+rocm6.3

tensorboard==2.15.2

-r requirements.txt
""",
    "requirements_macos_arm64.txt": """\
--pre --extra-index-url https://download.pytorch.org/whl/nightly/cpu
torch==2.8.0.*
torchvision==0.22.*
git+https://github.com/bitsandbytes-foundation/bitsandbytes.git/#0.45.5
tensorflow-macos
tensorboard==2.15.2
-r requirements.txt
""",
    "requirements_pytorch_windows.txt": """\
# Custom index URL for specific packages
--extra-index-url https://download.pytorch.org/whl/cu128

torch==2.7.0+cu128
torchvision==0.22.0+cu128
xformers>=0.0.30

-r requirements_windows.txt""",
    "requirements_windows.txt": "tensorboard\ntensorflow>=2.16.1\n\n-r requirements.txt\n",
}
# what the run imports in the kohya_ss-shaped checkout: imagesize, rich, toml (entry script), accelerate, and
# cpuinfo (py-cpuinfo, told only by its RECORD); wandb only in another script, behind an option
KOHYA_RUN_IMPORTS = ["import imagesize", "from rich.console import Console", "import accelerate", "import cpuinfo"]
KOHYA_RUN_PINS = ["py-cpuinfo", "accelerate==1.6.0", "imagesize==1.4.1", "rich==14.1.0", "toml==0.10.2"]
OTHER_SCRIPT = """\
from library import train_util


def init_trackers(args):
    if args.log_with == "wandb":
        import wandb
"""


def make_kohya_checkout(work: Path) -> Path:
    """A kohya_ss-shaped git checkout: the GUI's files and requirement files, and the sd-scripts-like tree
    (make_tree) as a real submodule at the pinned commit."""
    origin = make_tree(work / "sd-scripts-origin", KOHYA_RUN_IMPORTS, [], {"sdxl_train.py": OTHER_SCRIPT})
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "sd-scripts")
    root = work / "kohya_ss"
    write_tree(root, {"kohya_gui.py": "import gradio\n", "kohya_gui/__init__.py": "import easygui\n",
                      **KOHYA_REQUIREMENTS})
    git(root, "init", "-q")
    git(root, "submodule", "add", "-q", origin.as_uri(), "sd-scripts")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "kohya_ss")
    return root
