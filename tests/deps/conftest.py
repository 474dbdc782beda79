"""Fixtures of the deps tests: ONE local wheelhouse and venv template per session (building them is most of
the gate's test time), each test's scan cache of its own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.deps_fixtures import build_wheelhouse, make_venv


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "lorasetup"


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deps")


@pytest.fixture(scope="session")
def wheels(work: Path) -> Path:
    return build_wheelhouse(work)


@pytest.fixture(scope="session")
def pip_template(work: Path) -> Path:
    """A venv with pip (and the setuptools Python bundles), nothing else; copied, never changed."""
    make_venv(work / "template", with_pip=True)
    return work / "template"


@pytest.fixture(scope="session")
def bare(work: Path) -> Path:
    """A venv with nothing in it at all."""
    return make_venv(work / "bare", with_pip=False)


@pytest.fixture
def activated(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Put a venv's bin first on PATH, as `source venv/bin/activate` does."""
    def activate(python: Path) -> None:
        monkeypatch.setenv("PATH", f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return activate
