"""git, run the way every gate runs it: never prompting, C locale, a missing git is bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lorasetup.engine.result import CheckFailed


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git in `cwd` (never prompting); a missing git is bad input, not a crash."""
    try:
        return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise CheckFailed("git is not installed", hint="install git, then run lorasetup again") from None
