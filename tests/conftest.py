"""lorasetup's own tests ask the training interpreter anew each time: a warm cache kept between tests could
carry one test's answer into another. The warm cache has tests of its own (tests/engine/test_warm.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASETUP_FRESH", "1")
