"""The watched long run end to end on the fixture trainer (started directly, no accelerate hop; its arguments are
exactly those `lorasetup train` builds): each stop reason, the checkpoint table, the summary and the report, and
that no process of the run is left behind."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lorasetup.engine.context import Context
from lorasetup.engine.target import Target
from lorasetup.sd.run.command import run_env
from lorasetup.sd.run.console import Console
from lorasetup.sd.run.longrun import LongRun, TrainOptions, run_long
from lorasetup.sd.run.plan import RunPlan, run_plan
from lorasetup.sd.run.summary import exit_status, report, summary_lines
from tests.support.smoke import FIXTURE, alive, sd_tree

# 3 images x 2 repeats = 6 steps per epoch; 12 steps = 2 epochs; saves at steps 4, 8, 12 and the final file.
BASE_ARGS = ["--output_name", "t", "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "2",
             "--learning_rate", "1e-3", "--max_train_steps", "12", "--save_every_n_steps", "4"]


@pytest.fixture
def make_plan(tmp_path, dataset):
    """The real plan of a Target (step plan, save points, expectations), launched without the accelerate hop."""
    tree = sd_tree(tmp_path / "sd-scripts")

    def make(*extra: str) -> RunPlan:
        target = Target(kohya_root=tree, python=Path(sys.executable), dataset_config=dataset,
                        output_dir=tmp_path / "out", train_args=[*BASE_ARGS, *extra])
        with Context(target) as ctx:
            plan = run_plan(ctx)
        script = plan.argv.index(str(tree / "train_network.py"))
        return replace(plan, argv=[sys.executable, str(FIXTURE), *plan.argv[script + 1:]])
    return make


def watched(plan: RunPlan, tmp_path: Path, options: TrainOptions | None = None, smoke: dict | None = None,
            **env: str) -> tuple[LongRun, str]:
    """Run the plan under every guard; prove the trainer and its worker process are gone afterwards."""
    options = options or TrainOptions()
    record = tmp_path / "args.json"
    full_env = {**run_env(), "FIXTURE_TRAINER_STEP_S": "0.05", "FIXTURE_TRAINER_ARGS": str(record),
                "FIXTURE_TRAINER_WORKER": "1", **{f"FIXTURE_TRAINER_{k.upper()}": v for k, v in env.items()}}
    screen = io.StringIO()
    console = Console(screen, live=False, quiet=True, interval_s=0.5, total=plan.total_steps, on_nan=options.on_nan)
    run = run_long(plan, options, console, full_env, smoke)
    pids = json.loads(record.read_text())
    assert not any(alive(pid) for pid in (pids["pid"], pids["worker_pid"]) if pid), "a process of the run is left"
    return run, screen.getvalue()


def table(run: LongRun) -> list[tuple[int | None, str, str]]:
    return [(c.step, c.path.name, c.state) for c in run.checkpoints]


def test_good_run_exits_0_with_every_checkpoint_verified_and_a_report(make_plan, tmp_path):
    plan = make_plan("--save_state")
    assert [s["step"] for s in plan.saves] == [4, 8, 12, 12] and plan.total_steps == 12
    run, screen = watched(plan, tmp_path, smoke={"eta_s": 2.0, "total_steps": 12})
    assert exit_status(run) == 0 and run.succeeded, "\n".join(summary_lines(run))
    assert table(run) == [(4, "t-step00000004.safetensors", "ok"), (8, "t-step00000008.safetensors", "ok"),
                          (12, "t-step00000012.safetensors", "ok"), (12, "t.safetensors", "ok")]
    assert [s.step for s in run.states] == [4, 8, 12, 12]
    lines = summary_lines(run)
    assert lines[0] == "12 of 12 steps done; every checkpoint verified, the final LoRA included"
    assert lines[1] == "steps      12 of 12 planned (dataset.steps)"
    assert lines[2].startswith("loss       first ") and len(lines[3].strip()) == 12  # one block per step
    assert "the smoke run estimated 2 s for 12 steps" in lines[4]
    assert f"last good checkpoint: {tmp_path / 'out' / 't.safetensors'} (step 12)" in lines
    assert "checkpoint step 4: t-step00000004.safetensors" in screen and "step 12/12" in screen
    data = json.loads(json.dumps(report(run, {"kohya_root": "x"})))
    assert data["schema_version"] == 1 and data["exit_status"] == 0 and data["stop"] is None
    assert sorted(int(n) for n in data["loss"]["per_step"]) == list(range(1, 13))
    assert [c["verdict"] for c in data["checkpoints"]] == ["ok"] * 4 and data["resume_command"] is None
    assert data["checkpoints"][0]["report"]["metadata"]["ss_steps"] == "4"
    memory = data["memory"]  # measured from outside: the kernel's high-water mark and the sampled process tree
    assert memory["trainer_peak_bytes"] > 10 * 2**20 and memory["tree_peak_bytes"] > 10 * 2**20
    assert lines[5].startswith("memory     peak trainer ") and "process tree " in lines[5]


def test_nan_stops_at_the_first_nonfinite_step_and_the_printed_command_resumes(make_plan, tmp_path):
    plan = make_plan("--save_state", "--save_every_n_steps", "3")
    run, _ = watched(plan, tmp_path, nan_from="9")
    assert run.outcome.stopped == "nonfinite" and run.watch.nonfinite == (9, "nan") and exit_status(run) == 1
    # sd-scripts saves step 9 before it prints step 9's loss: that file (and its state) already hold NaN
    assert table(run) == [(3, "t-step00000003.safetensors", "ok"), (6, "t-step00000006.safetensors", "ok"),
                          (9, "t-step00000009.safetensors", "broken")]
    assert run.last_good().path.name == "t-step00000006.safetensors"
    lines = summary_lines(run)
    assert lines[0] == "stopped at step 9 of 12: avr_loss=nan at step 9, the first non-finite loss"
    assert "keep: t-step00000006.safetensors (step 6), the last checkpoint saved before the loss diverged" in lines
    assert "do not use: t-step00000009.safetensors (saved after the divergence)" in lines
    assert any(line.startswith("change: lower learning_rate = 1e-3 (--learning_rate)") for line in lines)
    state = tmp_path / "out" / "t-step00000006-state"
    command = lines[lines.index(f"continue from {state}:") + 1]
    assert command == "  $ " + shlex.join([*plan.argv, "--resume", str(state), "--learning_rate=0.0001"])
    # that command, run: sd-scripts starts over at epoch 2 (step 6 of 6 per epoch) and trains the other 6 steps
    resumed = make_plan("--save_state", "--save_every_n_steps", "3", "--resume", str(state), "--learning_rate=0.0001")
    assert resumed.argv == shlex.split(command[4:]) and resumed.total_steps == 6 and resumed.resumed
    again, _ = watched(resumed, tmp_path)
    assert exit_status(again) == 0 and again.watch.steps_done == 6 and again.watch.total == 12, summary_lines(again)
    assert summary_lines(again)[1].startswith("steps      6 of 6 planned (dataset.steps, resumed at step 6: ")


def test_on_nan_warn_runs_on_and_still_fails(make_plan, tmp_path):
    run, screen = watched(make_plan(), tmp_path, TrainOptions(on_nan="warn"), nan_from="7")
    assert run.outcome.stopped is None and run.watch.steps_done == 12 and exit_status(run) == 1
    assert "avr_loss=nan at step 7: the run is diverging; carrying on (--on-nan warn)" in screen
    assert [state for _, _, state in table(run)] == ["ok", "broken", "broken", "broken"]
    headline = summary_lines(run)[0]
    assert headline.startswith("12 of 12 steps done, but the final LoRA is broken: ") and "hold NaN/inf" in headline


def test_a_nonfinite_checkpoint_stops_the_run_although_the_loss_is_finite(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, nan_save_at="4", step_s="0.3")
    assert run.outcome.stopped == "nonfinite-checkpoint" and run.watch.nonfinite is None
    assert run.outcome.stop_message == "t-step00000004.safetensors holds NaN/inf in 1 tensors"
    assert 4 <= run.watch.steps_done < 12 and table(run)[0] == (4, "t-step00000004.safetensors", "broken")
    assert exit_status(run) == 1 and run.last_good() in [c for c in run.checkpoints if c.step == 8] + [None]


def test_a_stall_is_stopped_after_the_stall_timeout(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, TrainOptions(stall_timeout_s=2.0), stall_at="5")
    assert run.outcome.stopped == "stall" and run.watch.steps_done == 5
    assert run.outcome.stop_message.startswith("no new step for 2 s after step 5 (limit 2 s: --stall-timeout 2 s)")
    assert run.outcome.wall_s < 15


def test_no_first_step_is_a_load_timeout(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, TrainOptions(load_timeout_s=2.0), load_s="60")
    assert run.outcome.stopped == "load-timeout" and run.watch.steps_done == 0 and run.outcome.wall_s < 15
    assert "no first step within the load timeout of 2 s: still loading" in summary_lines(run)[0]


def test_a_disk_too_small_for_the_next_save_stops_before_it(make_plan, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    run, screen = watched(make_plan(), tmp_path, smoke={"output_bytes": free + 2**30}, step_s="0.3")  # smoke LoRA
    assert run.outcome.stopped == "disk" and run.watch.steps_done == 3 and run.checkpoints == []
    assert "the save at step 4 (t-step00000004.safetensors) needs" in run.outcome.stop_message
    assert "stopped at step 3, before sd-scripts would fail mid-save" in run.outcome.stop_message
    assert "lorasetup: low disk: " in screen and "or the run stops there" in screen  # said at step 1


def test_a_crash_is_stopped_with_its_error_line(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, crash_at="6")
    assert run.outcome.stopped == "traceback" and exit_status(run) == 1
    assert summary_lines(run)[0] == "stopped at step 5 of 12: the run crashed: torch.OutOfMemoryError: CUDA out of " \
                                    "memory. Tried to allocate 2.00 GiB (fixture)"
    assert table(run) == [(4, "t-step00000004.safetensors", "ok")]
    assert summary_lines(run)[1].startswith("hint: [G2] the GPU ran out of memory")
    assert "no state was saved to continue from (add --save_state to resume a stopped run)" in summary_lines(run)


def test_a_corrupt_checkpoint_is_in_the_table_and_fails_the_run(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, corrupt_at="8")
    assert run.outcome.stopped is None and run.outcome.returncode == 0 and exit_status(run) == 1
    states = {step: (name, state) for step, name, state in table(run) if name != "t.safetensors"}
    assert states == {4: ("t-step00000004.safetensors", "ok"), 8: ("t-step00000008.safetensors", "broken"),
                      12: ("t-step00000012.safetensors", "ok")}
    broken = run.checkpoints[1]
    assert broken.report.unreadable == "truncated" and broken.verdict.startswith("broken: t-step00000008.safetensors")
    assert summary_lines(run)[0] == "12 of 12 steps done, final LoRA verified, but 1 checkpoint(s) are broken"


def test_no_data_found_is_stopped(make_plan, tmp_path):
    run, _ = watched(make_plan(), tmp_path, mode="nodata")
    assert run.outcome.stopped == "no-data" and exit_status(run) == 1
    assert summary_lines(run)[0] == "stopped: sd-scripts found no images (\"No data found\") and would exit 0 " \
                                    "without training"
