"""What the real run will do, known before it starts: its command, total steps, save points, output folder,
the final file's name and what each saved LoRA should hold. Shared by the smoke gate (its ETA) and the
watched long run (stall, disk and checkpoint guards, the summary)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.files import FileProblem, read_json
from lorasetup.sd.dataset.plan import dataset_step_plan
from lorasetup.sd.facts import DEFAULT_LAST_NAME, DEFAULT_SAVE_MODEL_AS, TRAINING_DEFAULTS
from lorasetup.sd.lora import Expect, expect_from_args
from lorasetup.sd.run.command import real_command
from lorasetup.sd.trainargs import TrainArgs, path_setting, train_args


def step_plan(ctx: Context) -> tuple[dict[str, Any] | None, str]:
    """The dataset's step plan (None when it cannot be made) and, then, a note on why."""
    try:
        return dataset_step_plan(ctx), ""
    except Exception as exc:  # noqa: BLE001 - a by-product here; the dataset gate reports the cause
        return None, f" (dataset step plan failed: {exc})"


def planned_steps(ctx: Context) -> tuple[int | None, str]:
    """The full run's total steps and where the number comes from."""
    plan, note = step_plan(ctx)
    if plan and isinstance(plan.get("total_steps"), int):
        return plan["total_steps"], "dataset.steps"
    args = train_args(ctx)
    if args.get("max_train_epochs") not in (None, ""):
        return None, f"max_train_epochs needs the dataset's step count{note}"
    if args.get("max_train_steps") not in (None, ""):
        return int(args.get("max_train_steps")), args.place("max_train_steps")
    return TRAINING_DEFAULTS["max_train_steps"], "sd-scripts' default max_train_steps"


@dataclass
class RunPlan:
    """The real run as planned. `saves` are the step plan's save points ({step, kind, file}), [] when the plan
    cannot be made; `save_state` means a state folder beside each saved LoRA."""

    argv: list[str]
    args: TrainArgs
    output_dir: Path | None
    final_file: str
    total_steps: int | None
    total_from: str
    saves: list[dict[str, Any]] = field(default_factory=list)
    save_state: bool = False
    state_on_end: bool = False
    expect: Expect = field(default_factory=Expect)
    resumed: bool = False  # --resume: sd-scripts' steps bar counts the remaining steps from 0 again

    @property
    def verifiable(self) -> bool:
        """Only .safetensors files can be verified (a pickle is never opened)."""
        return self.final_file.endswith(".safetensors")


def resume_offset(args: TrainArgs, steps_per_epoch: int | None) -> tuple[int, str] | None:
    """The steps a `--resume`d run does not train again, and why. train_network.py reads the state's
    train_state.json; without --skip_until_initial_step it starts over at the beginning of that step's epoch, with
    it right after the step; either way its steps bar (and global_step, which names the checkpoints) counts from 0
    again. None when the run does not resume or the state says no step."""
    resume = args.get("resume")
    try:
        step = int(read_json(Path(str(resume)) / "train_state.json")["current_step"])
    except (FileProblem, ValueError, KeyError, TypeError):
        return None
    if args.on("skip_until_initial_step"):
        return step, f"resumed at step {step}"
    if not steps_per_epoch:
        return None
    epoch = step // steps_per_epoch
    return epoch * steps_per_epoch, f"resumed at step {step}: sd-scripts trains on from the start of epoch {epoch + 1}"


def _resumed(plan: RunPlan, steps_per_epoch: int | None) -> RunPlan:
    """The plan of a resumed run: the remaining steps, numbered from 0 as sd-scripts numbers them."""
    offset = resume_offset(plan.args, steps_per_epoch) if plan.total_steps else None
    if offset is None or plan.total_steps is None:
        return plan
    total = max(plan.total_steps - offset[0], 0)
    saves = [s for s in plan.saves if s["kind"] != "final" and s["step"] < total]
    saves += [{"step": total, "kind": "final", "file": plan.final_file}]
    return replace(plan, total_steps=total, total_from=f"{plan.total_from}, {offset[1]}", saves=saves, resumed=True)


def run_plan(ctx: Context) -> RunPlan:
    """The plan of the Target's real run (raises CheckFailed when there is nothing to launch)."""
    args = train_args(ctx)
    total, total_from = planned_steps(ctx)
    steps, _ = step_plan(ctx)
    ext = str(args.get("save_model_as") or DEFAULT_SAVE_MODEL_AS)
    plan = RunPlan(argv=real_command(ctx.target), args=args, output_dir=path_setting(ctx, "output_dir", "output_dir"),
                   final_file=f"{args.get('output_name') or DEFAULT_LAST_NAME}.{ext}", total_steps=total,
                   total_from=total_from, saves=list(steps["saves"]) if steps else [],
                   save_state=args.on("save_state"),
                   state_on_end=args.on("save_state") or args.on("save_state_on_train_end"),
                   expect=expect_from_args(args))
    return _resumed(plan, steps["steps_per_epoch"] if steps else None) if args.get("resume") else plan
