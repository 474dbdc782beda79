"""The device gate: torch can use the expected device, accelerate launch lands there, the mixed precision and
the training args fit it.

Run: pytest validation -m preflight --kohya-root /path/to/kohya_ss --device mps
"""

import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("device"))
def test_device(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
