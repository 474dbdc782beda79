"""The LoRA file verifier (lorasetup.sd.lora) on files written here: conv ranks, U-Net-only runs, alpha and
metadata disagreements, missing training metadata, damaged files, and expectations read from a file's own
metadata (for a folder whose training arguments are unknown)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lorasetup.sd.lora import expect_from_args, expect_from_metadata, verify_lora
from lorasetup.sd.safetensors_header import read_header
from lorasetup.sd.trainargs import load_train_args
from tests.support.loras import lora


def check(path: Path, *argv: str) -> tuple[list[str], list[str]]:
    report = verify_lora(path, expect_from_args(load_train_args(None, list(argv))))
    return report.problems, report.facts


def test_good_lora_in_fp16(tmp_path):
    problems, facts = check(lora(tmp_path / "l.safetensors", alpha=0.3, dtype=np.float16),
                            "--network_alpha=0.3", "--network_dim=4")
    assert problems == [] and "all finite" in facts[0] and "ranks [4]" in facts[1]


def test_default_rank_and_alpha(tmp_path):
    path = lora(tmp_path / "l.safetensors", meta={"ss_network_dim": "None", "ss_network_alpha": "1", "ss_steps": "5",
                                                  "ss_epoch": "1", "ss_network_module": "networks.lora"})
    assert check(path)[0] == []


def test_conv_modules_use_conv_dim(tmp_path):
    path = lora(tmp_path / "l.safetensors", conv_rank=2)
    assert check(path, "--network_dim=4", "--network_args", "conv_dim=2")[0] == []
    problems, _ = check(path, "--network_dim=4")
    assert len(problems) == 1 and "rank 2" in problems[0]


def test_unet_only_needs_no_text_encoder_modules(tmp_path):
    path = lora(tmp_path / "l.safetensors", te=False)
    assert check(path, "--network_train_unet_only")[0] == []
    assert "no lora_te modules" in check(path)[0][0]


def test_wrong_alpha_metadata_and_nan(tmp_path):
    path = lora(tmp_path / "l.safetensors", alpha=2.0, nan=True,
                meta={"ss_network_dim": "8", "ss_network_alpha": "2.0", "ss_steps": "5", "ss_epoch": "1",
                      "ss_network_module": "networks.lora"})
    problems, _ = check(path, "--network_dim=4", "--network_alpha=1")
    assert "hold NaN/inf" in problems[0]
    assert any("alpha other than network_alpha = 1" in p for p in problems)
    assert any("ss_network_dim = 8" in p for p in problems)
    assert any("ss_network_alpha = 2.0" in p for p in problems)


def test_other_network_modules_skip_the_rank_comparison(tmp_path):
    path = lora(tmp_path / "l.safetensors", rank=16)
    problems, facts = check(path, "--network_module=lycoris.kohya", "--network_dim=4")
    assert problems == [] and "ranks not compared" in facts[-1]


def test_training_metadata_is_required_unless_no_metadata(tmp_path):
    path = lora(tmp_path / "l.safetensors", meta={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                                  "ss_network_alpha": "1.0"})
    problems, _ = check(path, "--network_dim=4")
    assert problems == ["training metadata missing: ss_steps, ss_epoch (sd-scripts writes them on every save; "
                        "a file without them was not written by this run's save)"]
    assert check(path, "--network_dim=4", "--no_metadata")[0] == []  # --no_metadata keeps only the minimum keys


def test_truncated_and_trailing_bytes_and_missing(tmp_path):
    good = lora(tmp_path / "l.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[:-10])
    report = verify_lora(cut, expect_from_args(load_train_args(None, [])))
    assert report.unreadable == "truncated" and "truncated" in report.problems[0]
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(good + b"\0" * 7)
    assert check(longer)[0] == ["7 bytes after the last tensor: the file is damaged (two writes mixed, or not "
                                "written by safetensors)"]
    gone = verify_lora(tmp_path / "gone.safetensors", expect_from_args(load_train_args(None, [])))
    assert gone.unreadable == "missing" and "cannot be read" in gone.problems[0]


def test_expectations_from_the_files_own_metadata(tmp_path):
    path = lora(tmp_path / "l.safetensors", rank=8, alpha=4.0, conv_rank=2, step=230,
                meta={"ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_network_module": "networks.lora",
                      "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1"}), "ss_steps": "230"})
    report = verify_lora(path, expect_from_metadata(read_header(path).metadata))
    assert report.ok, report.problems
    assert report.step == 230 and report.summary() == "step 230, networks.lora, dim 8, alpha 4.0"
    report = verify_lora(lora(tmp_path / "bare.safetensors", meta={}), expect_from_metadata({}))
    assert report.ok and report.summary() == "no training metadata" and "ranks not compared" in report.facts[-1]
