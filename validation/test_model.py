"""The model gate: the base model file is whole, its family fits the script, the tokenizer loads offline.

Run: pytest validation -m preflight
"""

import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("model"))
def test_model(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
