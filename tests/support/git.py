"""Real git for the tests: the test identity, the file protocol allowed for submodules, and a tiny
sd-scripts tree."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "lorasetup tests", "GIT_AUTHOR_EMAIL": "tests@lorasetup.invalid",
    "GIT_COMMITTER_NAME": "lorasetup tests", "GIT_COMMITTER_EMAIL": "tests@lorasetup.invalid",
    "GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "protocol.file.allow", "GIT_CONFIG_VALUE_0": "always",
    "GIT_CONFIG_KEY_1": "init.defaultBranch", "GIT_CONFIG_VALUE_1": "main",
    "GIT_CONFIG_NOSYSTEM": "1",
}
SD_SCRIPTS_FILES = {
    "train_network.py": "import library.train_util\nfrom networks import lora\nprint('training')\n",
    "sdxl_train_network.py": "import library.train_util\n",
    "library/__init__.py": "",
    "library/train_util.py": "import os\n",
    "networks/__init__.py": "",
    "networks/lora.py": "import math\n",
    "requirements.txt": "packaging\n-e .\n",
    "setup.py": "from setuptools import setup\nsetup(name='library', packages=['library', 'networks'])\n",
}


def git(cwd: Path, *args: str) -> str:
    """Run git with the test identity and the file protocol allowed; fail loudly."""
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> text, dedented) under `root`; returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
