"""Fixtures of the smoke tests: a tiny real dataset, and a target whose entry script is the fixture trainer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from lorasetup.engine.target import Target
from tests.support.smoke import GUI_CONFIG, sd_tree


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small images with .txt captions and a dataset TOML (3 images x 2 repeats)."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 120, 200 - 30 * i)).save(root / "img" / f"p{i}.png")
        (root / "img" / f"p{i}.txt").write_text(f"a photo, style {i}")
    config = root / "dataset.toml"
    config.write_text(f'[general]\ncaption_extension = ".txt"\n\n[[datasets]]\nresolution = 32\nbatch_size = 1\n\n'
                      f'  [[datasets.subsets]]\n  image_dir = "{root / "img"}"\n  num_repeats = 2\n')
    return config


@pytest.fixture
def setup(tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Target, Path, Path]:
    """(target, the file the trainer writes its arguments to, the person's own output_dir)."""
    record = tmp_path / "args.json"
    monkeypatch.setenv("FIXTURE_TRAINER_ARGS", str(record))
    monkeypatch.setenv("FIXTURE_TRAINER_STEP_S", "0.1")
    monkeypatch.delenv("FIXTURE_TRAINER_MODE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # accelerate finds no config: its defaults, one process
    person_out = tmp_path / "my-loras"
    config = tmp_path / "config_lora.toml"
    config.write_text(GUI_CONFIG.format(out=person_out))
    target = Target(kohya_root=sd_tree(tmp_path / "sd-scripts"), python=Path(sys.executable), dataset_config=dataset,
                    train_config=config, smoke_steps=5, smoke_timeout=120)
    return target, record, person_out
