"""The repo gate: the checkout is there, its sd-scripts submodule populated at the pinned commit.

Run: pytest validation -m preflight --kohya-root /path/to/kohya_ss
"""

import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("repo"))
def test_repo(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
