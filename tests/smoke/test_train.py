"""`lorasetup train`: refuses a target with a failing gate, launches a good one with the smoke run's command
minus the overrides, and watches it to its end (test_longrun.py tests each way the watched run stops).

The registry is cut down to the repo, model and smoke gates here: the fixture tree is not an installed
sd-scripts, so the deps gate (which wants sd-scripts' `library` installed from the checkout) cannot pass on it.
Those gates have their own tests; what is tested here is the refusal and the launch.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorasetup import commands
from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.sd.run import command as launch

SD1 = {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 8),
       "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}


@pytest.fixture(autouse=True)
def gates(monkeypatch):
    gated = [c for c in all_checks() if c.gate in ("repo", "model", "smoke")]
    monkeypatch.setattr(commands, "all_checks", lambda: gated)


def train(target, **kw) -> int:
    with Context(target) as ctx:
        return commands.train_command(ctx, **{"no_smoke": False, "force": False, **kw})


def test_refuses_when_a_gate_fails(setup, capsys):
    target, record, person_out = setup
    target.base_model = target.kohya_root / "missing.safetensors"
    assert train(target) == 1
    err = capsys.readouterr().err
    assert "✗ model.file" in err and "not starting the run" in err and "--force" in err
    assert not record.exists() and not person_out.exists()  # neither the smoke run nor the real run started


def test_force_starts_despite_the_failed_gate(setup, capsys):
    target, _, person_out = setup
    target.base_model = target.kohya_root / "missing.safetensors"
    assert train(target, force=True, no_smoke=True) == 0
    assert "starting despite failed checks" in capsys.readouterr().err
    assert (person_out / "mychar.safetensors").is_file()


def test_launches_a_good_target_after_the_smoke_run(setup, capsys, tmp_path):
    target, record, person_out = setup
    target.base_model = tmp_path / "sd15.safetensors"
    save_file({name: np.zeros(shape, dtype=np.float16) for name, shape in SD1.items()}, str(target.base_model))
    assert train(target) == 0
    err = capsys.readouterr().err
    assert "✓ smoke.run" in err and "✓ model.family" in err
    real = json.loads(record.read_text())  # the last run is the real one
    assert real["max_train_epochs"] == 3 and real["max_train_steps"] == 1600  # the person's settings, 18 steps
    assert real["output_dir"] == str(person_out) and real["output_name"] == "mychar"
    assert real["save_every_n_steps"] == 2 and real["pretrained_model_name_or_path"] == str(target.base_model)
    assert sorted(p.name for p in person_out.iterdir()) == \
        [f"mychar-step{s:08d}.safetensors" for s in range(2, 19, 2)] + ["mychar.safetensors"]
    started = err.index("$ ")
    assert err[started:].splitlines()[0] == "$ " + shlex.join(launch.real_command(target))
    summary = err[err.index("lorasetup train: "):]  # the real run was watched to its end
    assert summary.startswith("lorasetup train: 18 of 18 steps done; every checkpoint verified, the final LoRA")
    assert "the smoke run estimated" in summary and summary.count(" ok\n") == 10  # 9 step saves and the final
    assert f"last good checkpoint: {person_out / 'mychar.safetensors'} (step 18)" in summary
