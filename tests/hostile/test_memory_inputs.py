"""The memory estimate reads the same hostile inputs as the static gates (the dataset's images and config, the
training arguments, the model header): for every case of the corpus, reading its inputs and building the
smoke run's largest-bucket dataset config answer within the corpus' bound and either give an estimate or say
why there is none (NotEstimated / a line), never another exception and never a hang."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lorasetup import cli
from lorasetup.checks.smoke import memory as smoke_memory
from lorasetup.engine.context import Context
from lorasetup.sd.memory.inputs import NotEstimated, RunFacts, run_facts
from tests.hostile.baseline import ANSWER_WITHIN_S, build, within
from tests.hostile.cases import CASES, Case

IN_PROCESS = [c for c in CASES if not c.as_user]


def memory_inputs(flags: list[str], temp: Path) -> tuple[Any, Any]:
    """What device.memory and the smoke run read before they run anything: the estimate's inputs (or why
    there are none) and the largest-bucket arguments."""
    args, extra = cli.split_passthrough(["doctor", *flags])
    with Context(cli.make_target(cli.build_parser().parse_args(args), extra)) as ctx:
        try:
            facts: Any = run_facts(ctx, "cpu")
        except NotEstimated as exc:
            facts = exc
        return facts, smoke_memory.largest_bucket_args(ctx, temp)


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.name for c in IN_PROCESS])
def test_memory_inputs_answer_every_hostile_case(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    setup = build(tmp_path)
    expect = case.make(setup)
    for key, value in expect.env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "smoke").mkdir()
    facts, (bucket_args, line, _) = within(ANSWER_WITHIN_S, lambda: memory_inputs(setup.flags(), tmp_path / "smoke"),
                                           "the memory inputs")
    assert isinstance(facts, (RunFacts, NotEstimated))
    assert str(facts) if isinstance(facts, NotEstimated) else facts.run.width > 0
    assert line and all(a.startswith("--dataset_config=") for a in bucket_args)
