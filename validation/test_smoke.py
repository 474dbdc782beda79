"""The smoke gate: a real short training run of the real command, finite loss at every step, a sane LoRA.

Run: pytest validation -m smoke (minutes: it trains). Its pytest timeout is the target's smoke timeout plus
a margin, so it is set here, once pytest's options give the target.
"""

import pytest

from lorasetup.checks.smoke.checks import smoke_pytest_timeout
from lorasetup.engine.target import ConfigError, Target
from lorasetup.pytest_plugin import gate_params, target_from_config


def pytest_generate_tests(metafunc):
    try:
        timeout = smoke_pytest_timeout(target_from_config(metafunc.config))
    except ConfigError:
        timeout = smoke_pytest_timeout(Target())  # the target fixture reports the config error itself
    metafunc.parametrize("check_id", [
        pytest.param(*p.values, id=p.id, marks=[*(m for m in p.marks if m.name != "timeout"),
                                                 pytest.mark.timeout(timeout)])
        for p in gate_params("smoke")])


def test_smoke(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
