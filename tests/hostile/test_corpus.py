"""Every hostile case (tests/hostile/cases.py) through `lorasetup doctor` in this process, and a sample through
the real CLI: zero tracebacks, zero `error` results, every case answers within 5 s, and the verdict sd-scripts
would earn: exit 1 with the file and the problem named where sd-scripts fails or hangs, exit 0 where it trains.

Permission cases need permission bits to apply: as root (who reads anything) they run through the CLI without
root's powers (setpriv drops CAP_DAC_OVERRIDE), as anyone else in this process like the rest."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.baseline import ANSWER_WITHIN_S, Answer, build, doctor_cli, doctor_in_process
from tests.hostile.cases import CASES, Case, Expect
from tests.support.privileges import without_root_powers

THROUGH_THE_CLI = ("fifo-named-like-an-image", "fifo-as-a-caption", "dataset-config-nested-2000-deep",
                   "training-config-is-a-fifo", "base-model-is-dev-zero", "caption-in-utf16",
                   "fifo-with-a-name-sd-scripts-never-reads")
ROOT = os.name == "posix" and os.geteuid() == 0


def verdict(answer: Answer, expect: Expect, within_s: float = ANSWER_WITHIN_S) -> None:
    """The corpus' promises for one answer."""
    assert answer.seconds < within_s, f"answered after {answer.seconds:.1f} s"
    assert "Traceback" not in answer.stderr, answer.stderr
    errors = [f"{k}: {r['summary']}" for k, r in answer.results.items() if r["status"] == "error"]
    assert not errors, errors
    assert expect.check in answer.results, answer.stderr
    text = answer.text(expect.check)
    assert answer.results[expect.check]["status"] == expect.status, text
    missing = [w for w in expect.words if w not in text]
    assert not missing, f"{missing} not in: {text}"
    assert answer.code == (1 if expect.status == "fail" else 0), answer.stderr


class _Listing:
    """What os.scandir returns, already read: iterable and a context manager."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self.entries = entries

    def __iter__(self) -> Iterator[os.DirEntry]:
        return iter(self.entries)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


@contextmanager
def change_after_listing(monkeypatch: pytest.MonkeyPatch, folder: Path, change: Callable[[], None]) -> Iterator[None]:
    """Make `change` the moment lorasetup has listed `folder` (once): a file vanishing mid-scan, deterministically."""
    real, done = os.scandir, []

    def scandir(path: Any = ".") -> Any:
        listing = real(path)
        if done or Path(os.fsdecode(path)) != folder:
            return listing
        with listing:
            entries = list(listing)
        done.append(change())
        return _Listing(entries)
    monkeypatch.setattr(os, "scandir", scandir)
    yield
    assert done, f"lorasetup never listed {folder}"


def run_case(case: Case, root: Path, monkeypatch: pytest.MonkeyPatch, cli: bool = False) -> tuple[Answer, Expect]:
    setup = build(root)
    expect = case.make(setup)
    for key, value in expect.env.items():
        monkeypatch.setenv(key, value)
    if case.as_user and ROOT:
        prefix = without_root_powers()
        if prefix is None:
            pytest.skip("running as root without setpriv: root reads anything, so this case is moot")
        return doctor_cli(setup, list(case.only), prefix), expect
    if cli:
        return doctor_cli(setup, list(case.only)), expect
    if expect.after_listing is None:
        return doctor_in_process(setup, list(case.only), case.within_s), expect
    with change_after_listing(monkeypatch, *expect.after_listing):
        return doctor_in_process(setup, list(case.only), case.within_s), expect


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_case_through_the_doctor(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    answer, expect = run_case(case, tmp_path, monkeypatch)
    verdict(answer, expect, case.within_s)


@pytest.mark.parametrize("name", THROUGH_THE_CLI)
def test_a_sample_through_the_cli(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = next(c for c in CASES if c.name == name)
    answer, expect = run_case(case, tmp_path, monkeypatch, cli=True)
    verdict(answer, expect)


def test_the_corpus_is_broad() -> None:
    """At least 40 cases, each saying what sd-scripts does, across the kinds of trouble the issue names."""
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert all("sd-scripts" in c.sd_scripts or "accelerate" in c.sd_scripts for c in CASES)
    words = " ".join(c.name for c in CASES)
    for kind in ("fifo", "socket", "device", "folder", "symlink", "utf16", "bom", "latin1", "nested", "gigabyte",
                 "unreadable", "vanishes"):
        assert kind in words, kind
    assert sum(c.as_user for c in CASES) >= 5
    assert sum(c.within_s > ANSWER_WITHIN_S for c in CASES) <= 2  # only the two that need the stack probe
