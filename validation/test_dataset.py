"""The dataset gate: the dataset config, folders, images and captions sd-scripts will read, and the exact step
count of the run. Run: pytest validation -m preflight"""
import pytest

from lorasetup.pytest_plugin import gate_params


@pytest.mark.parametrize("check_id", gate_params("dataset"))
def test_dataset(check_id, lorasetup_results):
    lorasetup_results.assert_passes(check_id)
