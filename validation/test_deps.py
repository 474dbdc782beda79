"""The deps gate: every import resolves, versions match the pins, the stack really imports.

Run: pytest validation -m preflight --kohya-root /path/to/kohya_ss --python /path/to/venv/bin/python
"""

import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("deps"))
def test_deps(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
