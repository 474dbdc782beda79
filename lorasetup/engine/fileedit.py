"""What every fix that rewrites a person's file shares: a backup next to it, and sd-scripts' view of a
training TOML (sections flattened one level)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorasetup.engine.result import FixError


def backup(path: Path) -> Path:
    """Copy `path` next to itself as `<name>.bak-<timestamp>` (never overwriting an older backup)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    try:
        shutil.copy2(path, target)
    except OSError as exc:
        raise FixError(f"cannot back up {path} to {target}: {exc.strerror}") from None
    return target


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """sd-scripts' read_config_from_file (library/train_util.py): sections flattened one level, later wins."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out
