"""The one guarded TOML editor: targeted edits that keep every other byte, verified by parsing again, refused
over a file changed since the check, backed up, and written atomically (a SIGKILL mid-write leaves the old
file or the new one, never half of one)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorasetup.engine.fileedit import TEMP_SUFFIX, guarded_write
from lorasetup.engine.result import FixError
from lorasetup.engine.target import tomllib
from lorasetup.engine.tomledit import Change, TomlEdit, edit_fix, toml_value, try_edit_fix

TRAIN = """\
# my training config
[model]
pretrained_model_name_or_path = "m.safetensors"   # SD 1.5
netwrok_dim = 32  # rank

[optim]
  mixed_precision = "fp16" # needs a GPU
  learning_rate = 1e-4
"""


def write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".bak-*"))


def test_set_rename_and_add_keep_comments_and_every_other_byte(tmp_path: Path) -> None:
    path = write(tmp_path, TRAIN)
    edit = TomlEdit(path, [Change(("optim",), "mixed_precision", "no"),
                           Change(("model",), "netwrok_dim", rename_to="network_dim"),
                           Change(("optim",), "sdpa", True)])
    edit.apply()
    assert path.read_text() == TRAIN.replace('"fp16" # needs', '"no" # needs').replace(
        "netwrok_dim = 32", "network_dim = 32") + "  sdpa = true\n"
    assert [b.read_text() for b in backups(path)] == [TRAIN]


def test_dry_run_lines_name_line_and_change(tmp_path: Path) -> None:
    edit = TomlEdit(write(tmp_path, TRAIN), [Change(("optim",), "mixed_precision", "no"),
                                             Change(("model",), "netwrok_dim", rename_to="network_dim")])
    text = "\n".join(edit.commands())
    assert 'line 7: optim.mixed_precision = "fp16" -> "no"' in text
    assert "line 4: rename `netwrok_dim` to `network_dim` (value and comment kept)" in text
    assert "bak-<timestamp>" in text


def test_arrays_of_tables_crlf_and_an_added_key_after_the_last_one(tmp_path: Path) -> None:
    text = ("[general]\r\nenable_bucket = true\r\n\r\n[[datasets]]\r\nresolution = 512\r\n\r\n"
            "  [[datasets.subsets]]\r\n  image_dir = 'a'\r\n  num_repeat = 10 # ten\r\n\r\n"
            "  [[datasets.subsets]]\r\n  image_dir = 'b'\r\n")
    path = write(tmp_path, text, "dataset.toml")
    TomlEdit(path, [Change(("datasets", 0, "subsets", 0), "num_repeat", rename_to="num_repeats"),
                    Change(("datasets", 0, "subsets", 1), "caption_extension", ".txt")]).apply()
    assert path.read_bytes().decode() == text.replace("num_repeat =", "num_repeats =") + \
        '  caption_extension = ".txt"\r\n'


def test_substitution_inside_a_multiline_string_keeps_its_lines(tmp_path: Path) -> None:
    text = 'train_args = """--network_dim=32 --mixed_precision=fp16\n  --xformers --max_train_steps=920"""\n'
    path = write(tmp_path, text, "lorasetup.toml")
    new = "--network_dim=32 --mixed_precision=no\n  --sdpa --max_train_steps=920"
    TomlEdit(path, [Change((), "train_args", new, within=(("--mixed_precision=fp16", "--mixed_precision=no"),
                                                          ("--xformers", "--sdpa")))]).apply()
    assert path.read_text() == f'train_args = """{new}"""\n'


def test_a_substitution_that_does_not_match_falls_back_to_the_whole_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'train_args = "--a \\u0031"\n', "lorasetup.toml")
    TomlEdit(path, [Change((), "train_args", "--a 2", within=(("1", "2"),))]).apply()
    assert tomllib.loads(path.read_text()) == {"train_args": "--a 2"}


@pytest.mark.parametrize("change, words", [
    (Change(("optim",), "learning_rate", 0.001, literal="1e-3 2"), "would not parse"),
    (Change(("optim",), "learning_rate", 0.001, literal="0.01"), "would change more than intended"),
    (Change(("nowhere",), "x", 1), "no table for nowhere.x"),
    (Change(("model",), "absent", rename_to="present"), "not a plain `key = value` line"),
])
def test_an_edit_that_does_not_parse_to_the_intended_document_is_refused(tmp_path: Path, change: Change,
                                                                         words: str) -> None:
    path = write(tmp_path, TRAIN)
    with pytest.raises(FixError, match=words):
        TomlEdit(path, [change])
    fix, why = try_edit_fix("x", [(path, [change])])
    assert fix is None and words in (why or "")
    assert path.read_text() == TRAIN and not backups(path)


def test_an_inline_table_value_is_not_reached_by_a_line_edit(tmp_path: Path) -> None:
    path = write(tmp_path, "model = { dim = 4 }\n")
    with pytest.raises(FixError):
        TomlEdit(path, [Change(("model",), "dim", 8)])


def test_a_file_changed_since_the_check_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TRAIN)
    fix = edit_fix("set it", [TomlEdit(path, [Change(("optim",), "mixed_precision", "no")])])
    changed = TRAIN.replace("1e-4", "2e-4")
    path.write_text(changed)  # the person edits the file between the check and the fix
    with pytest.raises(FixError, match="changed since the check read it"):
        fix.apply()
    assert path.read_text() == changed and not backups(path)


def test_a_fix_over_two_files_writes_neither_when_one_changed(tmp_path: Path) -> None:
    first, second = write(tmp_path, TRAIN, "a.toml"), write(tmp_path, TRAIN, "b.toml")
    fix, _ = try_edit_fix("both", [(first, [Change(("optim",), "mixed_precision", "no")]),
                                   (second, [Change(("optim",), "mixed_precision", "no")])])
    assert fix is not None
    second.write_text(TRAIN + "\n# mine\n")
    with pytest.raises(FixError):
        fix.apply()
    assert first.read_text() == TRAIN and not backups(first)


def test_mode_is_kept_and_backups_never_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path, TRAIN)
    path.chmod(0o600)
    for value in ("no", "bf16"):
        TomlEdit(path, [Change(("optim",), "mixed_precision", value)]).apply()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(backups(path)) == 2
    assert not list(tmp_path.glob("*" + TEMP_SUFFIX))


@pytest.mark.parametrize("value", ["C:\\train\\img", 'say "hi"', "tab\there", "del\x7f", 1.5, -3, [1, "a"],
                                   {"a b": 1}, True])
def test_rendered_values_parse_back(value: object) -> None:
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value


def test_guarded_write_refuses_when_a_new_file_appeared(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    path.write_text("{}")
    with pytest.raises(FixError, match="changed since"):
        guarded_write(path, None, b"x")


# --- a SIGKILL during the rewrite ------------------------------------------------------------------------

CHILD = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from lorasetup.engine import fileedit
    from lorasetup.engine.tomledit import Change, TomlEdit

    path, point, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    def pause():
        marker.write_text(point)
        time.sleep(120)

    if point == "mid-write":
        real_write = os.write
        def write(fd, data):
            done = real_write(fd, bytes(data[: len(data) // 2]))
            pause()
            return done
        os.write = write
    elif point == "before-rename":
        real_replace = os.replace
        def replace(a, b):
            pause()
            real_replace(a, b)
        os.replace = replace
    else:
        fileedit._fsync_dir = lambda folder: pause()
    TomlEdit(path, [Change(("optim",), "mixed_precision", "no")]).apply()
''')


@pytest.mark.parametrize("point, expect_new", [("mid-write", False), ("before-rename", False),
                                               ("after-rename", True)])
def test_a_sigkill_during_the_rewrite_leaves_old_or_new_never_half(tmp_path: Path, point: str,
                                                                    expect_new: bool) -> None:
    """The real editor in a real child process, paused at each step of the write and killed with SIGKILL."""
    old = TRAIN + "".join(f"# padding line {i} so that half a write is a real half\n" for i in range(20000))
    path = write(tmp_path, old)
    new = old.replace('"fp16" # needs', '"no" # needs')
    marker = tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), point, str(marker)],
                             cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the child never reached {point} (exit {child.poll()})"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert path.read_text() == (new if expect_new else old)
    assert [b.read_text() for b in backups(path)] == [old]
    leftovers = list(tmp_path.glob("*" + TEMP_SUFFIX))
    assert all(p.read_bytes() != path.read_bytes() for p in leftovers)
