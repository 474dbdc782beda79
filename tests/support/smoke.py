"""The fixture trainer (tests/support/fixture_trainer.py) as the entry script of an sd-scripts-shaped tree, and
what the smoke tests ask of the processes it starts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FIXTURE = Path(__file__).with_name("fixture_trainer.py")
GUI_CONFIG = """
[training]
network_module = "networks.lora"
network_dim = 4
network_alpha = 2.0
learning_rate = 1e-3
max_train_epochs = 3
save_every_n_steps = 2
sample_every_n_steps = 1
output_dir = "{out}"
output_name = "mychar"
"""


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


def sd_tree(root: Path) -> Path:
    """A bare sd-scripts-shaped checkout whose train_network.py is the fixture trainer."""
    for rel in ("library/__init__.py", "library/train_util.py", "networks/__init__.py", "networks/lora.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    shutil.copy(FIXTURE, root / "train_network.py")
    return root
