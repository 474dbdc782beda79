"""The pytest plugin: target options, markers, and the fixtures the validation gates use.

`pytest validation -m preflight` runs the same registry as `lorasetup doctor`, through the same Runner,
so both always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lorasetup.checks import MARKERS, all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.report import render_result
from lorasetup.engine.result import Status
from lorasetup.engine.runner import Runner
from lorasetup.engine.target import SETTINGS, ConfigError, Target, load_target

OPTIONS = tuple(s for s in SETTINGS if s.pytest)
SELECTED = pytest.StashKey[set]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lorasetup", "lorasetup: the training setup under test")
    for setting in OPTIONS:
        group.addoption(setting.flag, dest=setting.ini, default=None,
                        help=f"lorasetup target {setting.name}: {setting.help} (ini: {setting.ini})")
    group.addoption("--lorasetup-config", dest="lorasetup_config", default=None,
                    help="a lorasetup.toml (default: searched from the working directory upward)")
    for setting in SETTINGS:
        parser.addini(setting.ini, f"lorasetup target {setting.name}: {setting.help}", default=None)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def gate_params(gate: str) -> list[Any]:
    """One pytest param per check of `gate`: id = check id, markers = its tags, a pytest-timeout."""
    return [pytest.param(c.id, id=c.id, marks=[*(getattr(pytest.mark, t) for t in sorted(c.tags)),
                                               pytest.mark.timeout(c.timeout_s)])
            for c in all_checks() if c.gate == gate]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Remember which checks survived -m/-k selection, so their slow probes can start at once."""
    config.stash[SELECTED] = {item.callspec.params["check_id"] for item in items
                              if hasattr(item, "callspec") and "check_id" in item.callspec.params}


def target_from_config(config: pytest.Config) -> Target:
    flags = {s.name: config.getoption(s.ini) for s in OPTIONS}
    settings = {s.name: config.getini(s.ini) for s in SETTINGS}
    config_file = config.getoption("lorasetup_config")
    return load_target(flags, settings=settings, config=Path(config_file) if config_file else None)


class GateResults:
    """Runs each check once per session, requirements first; gate tests assert on it."""

    def __init__(self, runner: Runner, verbose: bool) -> None:
        self.runner = runner
        self.verbose = verbose

    def assert_passes(self, check_id: str) -> None:
        result = self.runner.result(check_id)
        text = render_result(result, verbose=True)
        if result.status is Status.SKIP:
            pytest.skip(f"{check_id}: {result.summary}")
        if result.status in (Status.FAIL, Status.ERROR):
            pytest.fail(text, pytrace=False)


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    """The training setup under test, from discovery, lorasetup.toml, LORASETUP_*, ini keys and flags."""
    try:
        return target_from_config(request.config)
    except ConfigError as exc:
        pytest.exit(f"lorasetup: {exc}", returncode=2)


@pytest.fixture(scope="session")
def lorasetup_results(request: pytest.FixtureRequest, target: Target) -> Any:
    checks = all_checks()
    ctx = Context(target, verbose=request.config.getoption("verbose") > 0)
    runner = Runner(ctx, checks)
    selected = request.config.stash.get(SELECTED, set())
    runner.plan(runner.order(c for c in checks if c.id in selected))
    yield GateResults(runner, ctx.verbose)
    ctx.close()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not config.stash.get(SELECTED, None) and not any(
            config.getoption(s.ini) for s in OPTIONS):
        return None
    try:
        t = target_from_config(config)
    except ConfigError:
        return None
    return [f"lorasetup target: {t.kohya_root} ({t.layout}), python {t.python_exe}, script {t.script}"]
