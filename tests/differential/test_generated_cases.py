"""The differential harness's datasets through lorasetup alone (runs in CI, no sd-scripts): every dataset check
answers without crashing on any of them (their crash cases included), and the generator covers the settings the
step plan reads, so the opt-in comparison cannot quietly shrink."""

from __future__ import annotations

from pathlib import Path

from lorasetup.engine.result import Status
from lorasetup.engine.target import Target
from tests.differential.generate import generate
from tests.support.checks import gate_checks, run_checks
from tests.support.dataset_checkout import make_checkout

COVERED = ("--train_data_dir", "--reg_data_dir", "--in_json", "--config_file", "--gradient_accumulation_steps",
           "--max_train_epochs", "--save_every_n_steps", "--seed")
IN_CONFIGS = ("metadata_file", "is_reg", "validation_split", "validation_seed", "cache_info", "bucket_no_upscale",
              "min_bucket_reso", "keep_tokens", "flip_aug", "caption_dropout_rate", "[[datasets]]\n", "num_repeats = 0")


def test_every_generated_case_gets_answers_not_crashes(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path / "sd-scripts")
    cases = generate(tmp_path / "cases", seed=11, count=60)
    statuses = {}
    for case in cases:
        results = run_checks(Target(kohya_root=checkout, train_args=case.argv), registry=gate_checks("dataset"))
        crashed = [f"{r.check_id}: {r.summary}" for r in results.values() if r.status is Status.ERROR]
        assert not crashed, f"{case.describe()}\n{crashed}"
        statuses[case.id] = {check_id: r.status for check_id, r in results.items()}
    steps = [s["dataset.steps"] for s in statuses.values()]
    assert steps.count(Status.OK) >= 15 and steps.count(Status.FAIL) >= 15
    argv = " ".join(a for c in cases for a in c.argv)
    configs = "".join(c.dataset_config.read_text() for c in cases if c.dataset_config)
    configs += "".join((c.root / "train.toml").read_text() for c in cases if (c.root / "train.toml").exists())
    assert [k for k in COVERED if k not in argv] == []
    assert [k for k in IN_CONFIGS if k not in configs] == []
