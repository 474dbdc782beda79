"""The args gate: training arguments are options of this checkout's script, in combinations it accepts,
with somewhere to write. Run: pytest validation -m preflight"""
import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("args"))
def test_args(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
