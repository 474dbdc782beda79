"""Small image folders with odd entries, drawn by hypothesis: real images, pipes, folders, symlink loops, dead
links, devices, empty files, foreign encodings, each under an image or caption name or neither. The dataset gate
answers within 5 s with no `error`, and fails exactly where a model of sd-scripts (glob_images, get_image_size,
read_caption; each behaviour verified against the real sd-scripts, see tests/hostile/cases.py) fails or hangs."""

from __future__ import annotations

import codecs
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.hostile.baseline import Setup, build, doctor_in_process

IMAGE_EXTENSIONS = (".png", ".jpg")  # two of sd-scripts' IMAGE_EXTENSIONS (glob is case-sensitive)
_png = io.BytesIO()
Image.new("RGB", (512, 512), (10, 200, 30)).save(_png, format="PNG")
CONTENTS = {"image": _png.getvalue(), "text": b"tok, thing\n", "empty": b"", "latin1": b"tok, caf\xe9\n",
            "utf16": "tok, thing\n".encode("utf-16"), "bom": codecs.BOM_UTF8 + b"tok, thing\n",
            "garbage": b"\x00\x01not an image"}
ODD = ("fifo", "folder", "loop", "dangling", "devnull")
# Caption contents read_caption crashes on (after os.path.isfile says yes): empty, or not UTF-8.
BAD_CAPTIONS = {"empty", "latin1", "utf16", "image"}

entries = st.dictionaries(
    keys=st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([*IMAGE_EXTENSIONS, ".txt", ".npz", ""])),
    values=st.sampled_from([*CONTENTS, *ODD]), max_size=7)


def make_entry(path: Path, kind: str) -> None:
    if kind in CONTENTS:
        path.write_bytes(CONTENTS[kind])
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "dangling":
        path.symlink_to("gone")
    else:
        path.symlink_to("/dev/null")


def sd_scripts_fails(tree: dict[tuple[str, str], str]) -> tuple[bool, bool]:
    """(images fail, captions fail) as sd-scripts would: every globbed image must be a real image, and every
    caption that is a regular file must be non-empty UTF-8 (pipes, folders, links to nowhere are skipped)."""
    images = {key: kind for key, kind in tree.items() if key[1] in IMAGE_EXTENSIONS}
    images_fail = not images or any(kind != "image" for kind in images.values())
    captions_fail = any(tree.get((stem, ".txt")) in BAD_CAPTIONS for stem, _ in images)
    return images_fail, captions_fail


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build(tmp_path_factory.mktemp("tree"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=entries)
def test_odd_folders_get_sd_scripts_verdict(setup: Setup, tree: dict[tuple[str, str], str]) -> None:
    folder = Path(tempfile.mkdtemp(dir=setup.root))
    for (stem, ext), kind in tree.items():
        make_entry(folder / f"{stem}{ext}", kind)
    setup.dataset.write_text(f"[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = 512\n"
                             f"[[datasets.subsets]]\nimage_dir = '{folder}'\n")
    answer = doctor_in_process(setup, ["dataset"])
    assert "Traceback" not in answer.stderr and answer.seconds < 5, answer.stderr
    statuses = {k: r["status"] for k, r in answer.results.items()}
    assert "error" not in statuses.values(), answer.stderr
    images_fail, captions_fail = sd_scripts_fails(tree)
    assert (statuses["dataset.images"] == "fail") is images_fail, answer.text("dataset.images")
    assert (statuses["dataset.captions"] == "fail") is captions_fail, answer.text("dataset.captions")
