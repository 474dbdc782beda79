"""Permission tests as root: root reads anything, so such a test runs its command without the capabilities that
let root ignore permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), through util-linux's setpriv."""

from __future__ import annotations

import os
import shutil


def without_root_powers() -> list[str] | None:
    """A command prefix under which permission bits apply: [] for a normal user, setpriv dropping every
    capability for root, None when we are root and setpriv is missing (the caller skips, saying why)."""
    if os.name != "posix" or os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all"] if setpriv else None
