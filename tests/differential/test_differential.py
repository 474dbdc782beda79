"""lorasetup's step plan against sd-scripts' own DatasetGroup, on random datasets (opt-in: needs a real checkout).

    LORASETUP_SD_SCRIPTS=~/bed/sd-scripts LORASETUP_SD_PYTHON=~/bed/venv/bin/python \\
        LORASETUP_DIFF_CASES=500 LORASETUP_DIFF_SEED=1 pytest tests/differential -s

The cases come from generate.py; sd_group.py builds each one's DatasetGroup in the checkout's venv with
train_network.py's own code and replays its training loop. lorasetup answers in this process, from the same
command line, with `dataset.schema`'s errors and `dataset.steps`' plan. They agree when both say the run stops
before its first step, or both plan the same run: batches per epoch, steps per epoch, total steps, epochs, the
train and reg images x repeats, and every checkpoint (its step, kind and file name).

Where they differ because sd-scripts is inconsistent with itself, EXPLAINED says why; any other divergence fails
the test, and each case it found is kept as a plain fixture test in tests/dataset/test_dataset_steps.py.
No model, no GPU and no training: building a DatasetGroup only lists folders and reads image headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lorasetup.engine.context import Context
from lorasetup.engine.target import Target
from lorasetup.sd.dataset.plan import compute_steps, schema_errors
from lorasetup.sd.dataset.schema import ConfigSyntaxError
from lorasetup.sd.dataset.steps import ImpossibleSteps
from tests.differential.generate import Case, generate

SD_SCRIPTS = os.environ.get("LORASETUP_SD_SCRIPTS")
pytestmark = pytest.mark.skipif(not SD_SCRIPTS, reason="opt-in: set LORASETUP_SD_SCRIPTS=/path/to/sd-scripts "
                                "(and LORASETUP_SD_PYTHON=its venv's python)")
CASES = int(os.environ.get("LORASETUP_DIFF_CASES", "100"))
SEED = int(os.environ.get("LORASETUP_DIFF_SEED", "1"))

# sd-scripts' own inconsistencies: divergences that are its doing, not lorasetup's.
EXPLAINED = {
    "0-px-wide bucket": (
        "bucket_no_upscale cuts a side below bucket_reso_steps to 0. When it is the height, make_buckets divides by "
        "it (ZeroDivisionError; both sides agree). When it is the width, make_buckets keeps a 0-px-wide bucket and "
        "the group builds, in the training or the validation dataset; the run fails when it first loads that image "
        "(trim_and_resize_if_required crops it to width 0, which the VAE's first 3x3 convolution cannot take). "
        "lorasetup stops both before the run."),
    "random validation split": (
        "validation_split without validation_seed and without --seed: split_train_val shuffles with the run's "
        "random seed, which train_network.py draws at random, so bucket counts (batch_size > 1) differ from run to "
        "run; lorasetup marks such a plan exact = false and the images x repeats still agree."),
}


def sd_python(root: Path) -> str:
    explicit = os.environ.get("LORASETUP_SD_PYTHON")
    if explicit:
        return explicit
    for candidate in (root / "venv" / "bin" / "python", root / ".venv" / "bin" / "python",
                      root.parent / "venv" / "bin" / "python"):
        if candidate.exists():
            return str(candidate)
    pytest.skip(f"no venv found for {root}: set LORASETUP_SD_PYTHON")


def ours(root: Path, case: Case) -> dict[str, Any]:
    """lorasetup's answer from the same command line: stop (with why) or the step plan."""
    ctx = Context(Target(kohya_root=root, script="train_network.py", train_args=case.argv))
    try:
        errors = schema_errors(ctx)
        if errors:
            return {"outcome": "stop", "why": "dataset.schema: " + errors[0].render("dataset.toml")}
        return {"outcome": "ok", **compute_steps(ctx).data()}
    except (ImpossibleSteps, ConfigSyntaxError) as exc:
        return {"outcome": "stop", "why": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a crash of the replay is a finding, reported with its case
        return {"outcome": "crash", "why": f"{type(exc).__name__}: {exc}"}
    finally:
        ctx.close()


def theirs(root: Path, cases: list[Case], work: Path) -> dict[int, dict[str, Any]]:
    """sd-scripts' answers, all cases in one process of its venv."""
    (work / "cases.json").write_text(json.dumps([{"id": c.id, "argv": c.argv + ["--console_log_level", "ERROR"]}
                                                  for c in cases]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(root)}
    with open(work / "sd-scripts.log", "w") as log:
        done = subprocess.run([sd_python(root), str(Path(__file__).with_name("sd_group.py")), str(work / "cases.json"),
                               str(work / "answers.jsonl")], cwd=root, env=env, stdout=log, stderr=log,
                              timeout=60 + 5 * len(cases), check=False)
    assert done.returncode == 0, f"sd_group.py exited {done.returncode}; see {work / 'sd-scripts.log'}"
    answers = [json.loads(line) for line in (work / "answers.jsonl").read_text().splitlines()]
    return {a["id"]: a for a in answers}


def _numbers(mine: dict[str, Any], sd: dict[str, Any]) -> list[str]:
    """The plan's numbers that differ, as `name: lorasetup vs sd-scripts`."""
    pairs = {"batches per epoch": (mine["batches_per_epoch"], sd["batches"]),
             "steps per epoch": (mine["steps_per_epoch"], sd["steps_per_epoch"]),
             "total steps": (mine["total_steps"], sd["final_step"]), "epochs": (mine["epochs"], sd["epochs"]),
             "train images x repeats": (mine["train_images_x_repeats"], sd["train_images"]),
             "reg images x repeats": (mine["reg_images_x_repeats"], sd["reg_images"]),
             "saves": (sorted([s["step"], s["kind"], s["file"]] for s in mine["saves"]), sorted(sd["saves"]))}
    return [f"{name}: {a} vs {b}" for name, (a, b) in pairs.items() if a != b]


def compare(mine: dict[str, Any], sd: dict[str, Any]) -> tuple[str, str, str]:
    """(agree | explained | diverge, the class of the case or of the divergence, the details)."""
    if mine["outcome"] == "crash":
        return "diverge", f"lorasetup's replay crashes ({mine['why'].split(':')[0]})", mine["why"]
    if sd["outcome"] == "error":
        stop = f"{sd['error'].split(':')[0]} in {sd['where']}"
        if mine["outcome"] == "stop":
            return "agree", f"both stop ({stop})", mine["why"]
        return "diverge", f"sd-scripts stops ({stop}), lorasetup plans a run", sd["error"]
    if sd["outcome"] == "no_data":
        if mine["outcome"] == "stop" and "No data found" in mine["why"]:
            return "agree", "both: no data", ""
        return "diverge", "sd-scripts finds no data, lorasetup does not say so", mine.get("why", "")
    if mine["outcome"] == "stop":
        if sd["zero_buckets"] and "0-px side" in mine["why"]:
            return "explained", "0-px-wide bucket", mine["why"]
        return "diverge", "lorasetup stops, sd-scripts builds the group", mine["why"]
    differ = _numbers(mine, sd)
    if not differ:
        return "agree", "same plan", ""
    if not mine["exact"] and all(d.startswith(("batches", "steps", "total", "epochs", "saves")) for d in differ):
        return "explained", "random validation split", "; ".join(differ)
    return "diverge", "plans differ: " + ", ".join(d.split(":")[0] for d in differ), "; ".join(differ)


def test_step_plan_matches_sd_scripts_dataset_group(tmp_path: Path) -> None:
    root = Path(SD_SCRIPTS or ".").expanduser().resolve()
    cases = generate(tmp_path / "cases", SEED, CASES)
    mine = {case.id: ours(root, case) for case in cases}
    sd = theirs(root, cases, tmp_path)
    verdicts = {case.id: compare(mine[case.id], sd[case.id]) for case in cases}
    tally = Counter(v for v, _, _ in verdicts.values())
    classes = Counter(f"{v}: {c}" for v, c, _ in verdicts.values())
    print(f"\n{len(cases)} random datasets (seed {SEED}): {tally['agree']} agree, {tally['explained']} explained, "
          f"{tally['diverge']} diverge", file=sys.stderr)
    for name, n in classes.most_common():
        print(f"  {n:4d}  {name}", file=sys.stderr)
    diverged = [f"{case.describe()}\n    {verdicts[case.id][1]}: {verdicts[case.id][2]}" for case in cases
                if verdicts[case.id][0] == "diverge"]
    report = os.environ.get("LORASETUP_DIFF_REPORT")
    if report:
        Path(report).write_text(json.dumps({"seed": SEED, "cases": len(cases), "tally": tally, "classes": classes,
                                            "diverged": diverged}, indent=1))
    assert not diverged, f"{len(diverged)} divergences:\n" + "\n".join(diverged[:20])
    assert {c for v, c, _ in verdicts.values() if v == "explained"} <= set(EXPLAINED)
