"""A stand-in sd-scripts checkout for the dataset gate: only the lines of sd-scripts it reads (the entry script's
`ConfigSanitizer(...)` and `verify_bucket_reso_steps(N)` calls, an `add_argument` line for the did-you-mean)."""

from __future__ import annotations

from pathlib import Path


def make_checkout(root: Path, divisor: int = 64, sanitizer: str = "True, True, args.masked_loss, True") -> Path:
    """A stand-in sd-scripts checkout with the few lines the dataset gate reads."""
    files = {
        "train_network.py": (
            "from library.config_util import BlueprintGenerator, ConfigSanitizer\n"
            "class NetworkTrainer:\n"
            "    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):\n"
            f"        train_dataset_group.verify_bucket_reso_steps({divisor})\n"
            "    def train(self, args):\n"
            f"        blueprint_generator = BlueprintGenerator(ConfigSanitizer({sanitizer}))\n"),
        "sdxl_train_network.py": ("import train_network\n"
                                  "class SdxlNetworkTrainer(train_network.NetworkTrainer):\n"
                                  "    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):\n"
                                  "        train_dataset_group.verify_bucket_reso_steps(32)\n"),
        "library/__init__.py": "",
        "library/train_util.py": ('def add_training_arguments(parser):\n'
                                  '    parser.add_argument("--learning_rate", type=float, default=2e-6)\n'),
        "networks/__init__.py": "",
        "networks/lora.py": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
