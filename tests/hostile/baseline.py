"""A small, complete training setup on which every static gate passes (a stand-in sd-scripts checkout with the
lines the gates read, three real PNGs with captions, a dataset TOML, a training TOML, an SD1-shaped safetensors
model, a prompt file, requirements), and the ways to run `lorasetup doctor` over it: in this process (with a
watchdog) or as a real CLI process. The hostile cases start from it and change one thing."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from lorasetup import cli

T = TypeVar("T")
ANSWER_WITHIN_S = 5.0  # every case answers within this, in-process or through the CLI
TRAIN_NETWORK = '''\
import argparse

from library import train_util
from library.config_util import BlueprintGenerator, ConfigSanitizer


class NetworkTrainer:
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        train_dataset_group.verify_bucket_reso_steps(64)

    def train(self, args):
        blueprint_generator = BlueprintGenerator(ConfigSanitizer(True, True, False, True))


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None)
    parser.add_argument("--v2", action="store_true")
    parser.add_argument("--train_data_dir", type=str, default=None)
    parser.add_argument("--caption_extension", type=str, default=".caption")
    parser.add_argument("--resolution", type=str, default=None)
    parser.add_argument("--dataset_config", type=str, default=None)
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--output_name", type=str, default=None)
    parser.add_argument("--max_train_steps", type=int, default=1600)
    parser.add_argument("--learning_rate", type=float, default=2e-6)
    parser.add_argument("--sample_prompts", type=str, default=None)
    parser.add_argument("--sample_every_n_steps", type=int, default=None)
    parser.add_argument("--sample_every_n_epochs", type=int, default=None)
    parser.add_argument("--sample_at_first", action="store_true")
    parser.add_argument("--network_module", type=str, default=None)
    parser.add_argument("--network_dim", type=int, default=None)
    parser.add_argument("--config_file", type=str, default=None)
    return parser


if __name__ == "__main__":
    args = setup_parser().parse_args()
    NetworkTrainer().train(args)
'''
CHECKOUT = {
    "train_network.py": TRAIN_NETWORK,
    "library/__init__.py": "",
    "library/train_util.py": "import os\n",
    "library/config_util.py": "import toml\n",
    "networks/__init__.py": "",
    "networks/lora.py": "import math\n",
    "requirements.txt": "packaging\n",
}
SD1_TENSORS = {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 8),
               "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    """A real safetensors file of F16 zeros (the format written by hand: 8-byte length, JSON header, data)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


@dataclass
class Setup:
    """The setup's parts; `flags` is the doctor's command line for it."""

    root: Path
    checkout: Path
    images: Path
    dataset: Path
    train: Path
    model: Path
    prompts: Path
    extra: list[str] = field(default_factory=list)  # more doctor flags a case adds (e.g. --accelerate-config)

    def flags(self) -> list[str]:
        return ["--kohya-root", str(self.checkout), "--python", sys.executable, "--train-config", str(self.train),
                *self.extra]

    def write_train(self, **values: str) -> None:
        """Rewrite the training TOML with `values` replacing or adding keys (all as TOML strings)."""
        settings = {**self._train_values(), **values}
        self.train.write_text("[training]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _train_values(self) -> dict[str, str]:
        return {"pretrained_model_name_or_path": json.dumps(str(self.model)), "network_module": '"networks.lora"',
                "network_dim": "16", "output_dir": json.dumps(str(self.root / "out")), "learning_rate": "1e-4",
                "max_train_steps": "20", "dataset_config": json.dumps(str(self.dataset)),
                "sample_prompts": json.dumps(str(self.prompts)), "sample_every_n_steps": "10"}


def build(root: Path) -> Setup:
    """Write the good setup under `root`."""
    checkout = root / "sd-scripts"
    for rel, text in CHECKOUT.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    images = root / "data" / "img"
    images.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (512, 512), (200, 30, 60)).save(images / f"a{i}.png")
        (images / f"a{i}.txt").write_text(f"tok, picture {i}\n")
    dataset = root / "data" / "dataset.toml"
    dataset.write_text("[general]\ncaption_extension = '.txt'\n\n[[datasets]]\nresolution = 512\n\n"
                       f"  [[datasets.subsets]]\n  image_dir = '{images}'\n  num_repeats = 2\n")
    model = write_safetensors(root / "model.safetensors", SD1_TENSORS)
    prompts = root / "prompts.txt"
    prompts.write_text("a picture of tok\n")
    setup = Setup(root, checkout, images, dataset, root / "train.toml", model, prompts)
    setup.write_train()
    return setup


@dataclass
class Answer:
    """One doctor run: exit code, the JSON results by id (if it printed them), stderr, wall time."""

    code: int
    results: dict[str, dict[str, Any]]
    stderr: str
    seconds: float

    def text(self, check_id: str) -> str:
        r = self.results[check_id]
        return "\n".join([r["summary"], *r["details"], r.get("hint") or ""])


def _answer(code: int, stdout: str, stderr: str, seconds: float) -> Answer:
    try:
        results = {r["id"]: r for r in json.loads(stdout)["results"]}
    except (ValueError, KeyError):
        results = {}
    return Answer(code, results, stderr, seconds)


def doctor_in_process(setup: Setup, only: list[str], within_s: float = ANSWER_WITHIN_S) -> Answer:
    """`lorasetup doctor --json --only ...` in this process, under a watchdog thread: a hang fails the case
    instead of hanging the suite (the run's own --timeout also bounds the checks)."""
    argv = ["doctor", "--json", "--timeout", str(within_s), *setup.flags(), "--only", *only]
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return cli.main(argv)
    start = time.monotonic()
    code = within(within_s * 2, run, f"lorasetup doctor {' '.join(argv)}")
    return _answer(code, out.getvalue(), err.getvalue(), time.monotonic() - start)


def within(seconds: float, call: Callable[[], T], what: str) -> T:
    """`call()` in a daemon thread: its answer (or what it raised), or a failure naming `what` when it has
    none after `seconds`, instead of a hung suite."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["answer"] = call()
        except BaseException as exc:  # noqa: BLE001 - raised again below, in the test's thread
            box["raised"] = exc
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"{what} did not answer in {seconds} s"
    if "raised" in box:
        raise box["raised"]
    return box["answer"]


def doctor_cli(setup: Setup, only: list[str], prefix: list[str] | None = None) -> Answer:
    """The same through a real `python -m lorasetup.cli` process (`prefix`: e.g. setpriv dropping root's powers)."""
    argv = [*(prefix or []), sys.executable, "-m", "lorasetup.cli", "doctor", "--json", *setup.flags(), "--only",
            *only]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=setup.root,
                          env={**os.environ, "NO_COLOR": "1"})
    return _answer(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
