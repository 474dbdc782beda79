"""The TOML renderer of files lorasetup writes: any string reads back exactly, paths as literal strings when they
can be, and a name that is not valid Unicode is refused rather than written broken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorasetup.engine import tomltext
from lorasetup.engine.target import tomllib


@given(st.text())
def test_any_string_reads_back(text):
    for render in (tomltext.basic_string, tomltext.path_string, tomltext.value):
        assert tomllib.loads(f"k = {render(text)}")["k"] == text


@given(st.lists(st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()), max_size=5))
def test_arrays_read_back(items):
    assert tomllib.loads(f"k = {tomltext.value(items)}")["k"] == items


@given(st.text())
def test_a_comment_never_breaks_the_line(text):
    assert tomllib.loads(f"k = 1  {tomltext.comment(text)}\nj = 2\n") == {"k": 1, "j": 2}


@pytest.mark.parametrize("path, rendered", [
    ("C:\\lora\\img", "'C:\\lora\\img'"),
    ("/home/me/it's", '"/home/me/it\'s"'),
    ("/tmp/a\tb", "'/tmp/a\tb'"),
    ("/tmp/new\nline", '"/tmp/new\\nline"'),
])
def test_paths_prefer_literal_strings(path, rendered):
    assert tomltext.path_string(path) == rendered


def test_names_that_are_not_unicode_are_refused():
    undecodable = b"/data/caf\xe9".decode("utf-8", "surrogateescape")  # how Python sees a Latin-1 file name
    with pytest.raises(tomltext.NotRepresentable, match="not valid UTF-8"):
        tomltext.path_string(undecodable)
    assert tomltext.comment(undecodable) == "# /data/caf?"
