"""The deps gate's static parts: the AST import-closure scan and the requirement-file parser."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from lorasetup.checks.deps.pins import device_of, runs_here
from lorasetup.checks.deps.requirements import Machine, Pin, checkout_files, logical_lines, parse_files
from lorasetup.engine.context import Context
from lorasetup.engine.target import ConfigError, Target, load_target
from lorasetup.sd.imports import closure, deep_targets, dist_for
from tests.support.git import write_tree

ENTRY = """\
import os
import numpy as np
from numpy import array
from library import train_util
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import never_at_runtime
try:
    import optional_a
except ImportError:
    optional_a = None
try:
    import reraised
except ImportError:
    raise ImportError("No reraised")
try:
    import exits
except ImportError:
    exit(1)
if os.name == "nt":
    import flagged
class Trainer:
    import in_class
    def train(self):
        import lazy
if __name__ == "__main__":
    import main_only
"""
TRAIN_UTIL = """\
from . import utils
from .utils import helper
import library.gone
if __name__ == "__main__":
    import not_entry_main
"""


def tree(tmp_path: Path, **extra: str) -> Path:
    return write_tree(tmp_path / "sd-scripts", {
        "train_network.py": ENTRY, "library/__init__.py": "", "library/train_util.py": TRAIN_UTIL,
        "library/utils.py": "import pandas.io.json\ndef helper():\n    pass\n",
        "networks/__init__.py": "", "networks/lora.py": "import math\n", **extra})


def context(root: Path | None, args: list[str] | None = None, train_config: Path | None = None) -> Context:
    return Context(Target(kohya_root=root, python=Path(sys.executable), train_args=args or [],
                          train_config=train_config))


def kinds(root: Path, args: list[str] | None = None) -> dict[str, set[str]]:
    found = closure(context(root, args))
    assert found is not None
    out: dict[str, set[str]] = {}
    for use in found.uses:
        out.setdefault(use.top, set()).add("required" if use.required else "guarded" if use.guarded else "deferred")
    return out


def test_scan_classifies_each_import_shape(tmp_path):
    root = tree(tmp_path)
    found = kinds(root)
    required = {top for top, k in found.items() if "required" in k}
    assert required == {"os", "numpy", "typing", "reraised", "exits", "in_class", "main_only", "pandas", "math"}
    assert found["optional_a"] == {"guarded"}
    assert found["flagged"] == {"deferred"} and found["lazy"] == {"deferred"}
    assert "never_at_runtime" not in found and "not_entry_main" not in found


def test_scan_follows_first_party_modules_and_reports_missing_ones(tmp_path):
    found = closure(context(tree(tmp_path)))
    assert set(found.modules) == {"train_network", "library", "library.train_util", "library.utils",
                                  "networks", "networks.lora"}
    assert found.missing_first_party == [("library.gone", "library/train_util.py:3")]
    assert [u.place for u in found.uses if u.top == "pandas"] == ["library/utils.py:1"]


def test_scan_cache_is_reused_and_follows_edits(tmp_path, own_cache):
    root = tree(tmp_path)
    first = closure(context(root))
    assert [p.name for p in own_cache.iterdir()] == [next(own_cache.iterdir()).name]
    again = closure(context(root))
    assert again.uses == first.uses and again.modules == first.modules
    (root / "library" / "utils.py").write_text("import pandas.io.json\nimport polars\n")
    edited = closure(context(root))
    assert [u.place for u in edited.uses if u.top == "polars"] == ["library/utils.py:2"]


def test_unparsable_file_is_noted_not_fatal(tmp_path):
    found = closure(context(tree(tmp_path, **{"library/utils.py": "def broken(:\n"})))
    assert len(found.unreadable) == 1 and found.unreadable[0].startswith("library/utils.py: ")
    assert "numpy" in {u.top for u in found.uses}


def test_deep_targets_are_required_third_party_modules_and_names(tmp_path):
    modules, pairs = deep_targets(context(tree(tmp_path)))
    assert modules == ["exits", "in_class", "main_only", "numpy", "pandas", "reraised"]
    assert pairs == [("numpy", "array"), ("pandas.io", "json")]


def test_deep_targets_empty_without_a_tree(tmp_path):
    assert deep_targets(context(None)) == ([], [])
    assert deep_targets(context(tmp_path / "missing")) == ([], [])


def test_training_arguments_add_the_modules_they_name(tmp_path):
    root = tree(tmp_path)
    args = ["--network_module", "lycoris.kohya", "--optimizer_type", "pytorch_optimizer.CAME",
            "--log_with", "wandb", "--xformers"]
    found = closure(context(root, args))
    by_place = {u.place: (u.module, u.names) for u in found.uses if not u.line}
    assert by_place == {"--network_module = lycoris.kohya": ("lycoris.kohya", ()),
                        "--optimizer_type = pytorch_optimizer.CAME": ("pytorch_optimizer", ("CAME",)),
                        "--log_with = wandb": ("wandb", ()), "--xformers": ("xformers.ops", ())}
    assert "networks.lora" not in found.modules  # the network module replaces the default
    modules, pairs = deep_targets(context(root, args))
    assert {"lycoris", "pytorch_optimizer", "wandb", "xformers"} <= set(modules)
    assert {("lycoris", "kohya"), ("pytorch_optimizer", "CAME"), ("xformers", "ops")} <= set(pairs)


def test_optimizer_and_logging_from_a_config_file(tmp_path):
    root = tree(tmp_path)
    config = write_tree(tmp_path, {"config.toml": '[optimizer]\noptimizer_type = "AdamW8bit"\n'
                                             '[logging]\nlogging_dir = "logs"\n'}) / "config.toml"
    found = closure(context(root, train_config=config))
    assert {(u.module, u.place) for u in found.uses if not u.line} == {
        ("bitsandbytes", "config.toml [optimizer] optimizer_type = AdamW8bit"),
        ("tensorboard", "config.toml [logging] logging_dir = logs")}


def test_dist_for_uses_the_table_only():
    assert dist_for("cv2") == "opencv-python"
    assert dist_for("google.protobuf.message") == "protobuf"
    assert dist_for("imagesize") is None


def test_logical_lines_join_continuations_and_drop_comments():
    text = "# header\nfoo==1.0  # pinned\nbar \\\n  >=2\n\nbaz @ git+https://x.invalid/baz.git#egg=baz\n"
    assert logical_lines(text) == [(2, "foo==1.0"), (3, "bar   >=2"), (6, "baz @ git+https://x.invalid/baz.git#egg=baz")]


def env(**overrides: str) -> dict[str, str]:
    return {**default_environment(), **overrides}


def test_requirement_files_as_kohya_ss_writes_them(tmp_path):
    write_tree(tmp_path, {
        "requirements.txt": "numpy>=1.26.0,<2\ndiffusers[torch]==0.32.2\nlycoris_lora==3.2.0.post2\n"
                            "opencv-python==4.10.0.84 --hash=sha256:00\n-e ./sd-scripts\n",
        "requirements_linux.txt": "--extra-index-url https://download.pytorch.org/whl/cu128\n\n"
                                  "torch==2.7.0+cu128\ntensorboard==2.14.1; python_version=='3.11'\n"
                                  "tensorboard==2.16.2; python_version!='3.11'\n-r requirements.txt\n",
        "requirements_macos_amd64.txt": "torch==2.0.0 torchvision==0.15.1 -f https://x.invalid/whl\n"
                                        "git+https://github.com/x/bitsandbytes.git/#0.45.5\n"
                                        "thing @ https://x.invalid/thing.whl\n-r requirements.txt\n"
                                        "-r nowhere.txt\n"})
    linux = parse_files([tmp_path / "requirements_linux.txt", tmp_path / "requirements.txt"],
                        env(python_version="3.11"))
    assert [f.name for f in linux.files] == ["requirements_linux.txt", "requirements.txt"]
    assert [p.spec for p in linux.pins] == ["torch==2.7.0+cu128", "tensorboard==2.14.1", "numpy<2,>=1.26.0",
                                            "diffusers[torch]==0.32.2", "lycoris_lora==3.2.0.post2",
                                            "opencv-python==4.10.0.84"]
    assert [p.place for p in linux.excluded] == ["requirements_linux.txt:5"]
    assert [e.place for e in linux.editables] == ["requirements.txt:5"]
    assert linux.index_options == ["--extra-index-url", "https://download.pytorch.org/whl/cu128"]
    assert linux.find("lycoris-lora").place == "requirements.txt:3"
    assert linux.find("torch").allows("2.7.0+cu128") and not linux.find("torch").allows("2.7.0+cpu")

    mac = parse_files([tmp_path / "requirements_macos_amd64.txt"], env())
    reasons = {u.place: u.reason for u in mac.unchecked}
    assert reasons["requirements_macos_amd64.txt:1"].startswith("not a valid requirement (pip rejects it too)")
    assert reasons["requirements_macos_amd64.txt:2"] == "a URL or path, not a version pin"
    assert reasons["requirements_macos_amd64.txt:3"] == "thing comes from a URL: https://x.invalid/thing.whl"
    assert reasons["requirements_macos_amd64.txt:5"].startswith("included file ")


def test_include_cycles_are_read_once(tmp_path):
    write_tree(tmp_path, {"a.txt": "-r b.txt\nfoo==1\n", "b.txt": "-r a.txt\nbar==2\n"})
    reqs = parse_files([tmp_path / "a.txt"], env())
    assert [f.name for f in reqs.files] == ["a.txt", "b.txt"]
    assert [p.spec for p in reqs.pins] == ["bar==2", "foo==1"]


def test_prerelease_pins_and_wildcards():
    pin = Pin(Requirement("torch==2.8.0.*"), Path("requirements_macos_arm64.txt"), 2)
    assert pin.allows("2.8.0.dev20250601") and not pin.allows("2.9.0")


KOHYA_FILES = ["requirements.txt", "requirements_linux.txt", "requirements_linux_rocm.txt", "requirements_ipex_xpu.txt",
               "requirements_runpod.txt", "requirements_macos_arm64.txt", "requirements_macos_amd64.txt",
               "requirements_windows.txt", "requirements_pytorch_windows.txt"]


@pytest.mark.parametrize(("machine", "expected", "why"), [
    (Machine("linux", "x86_64"), "requirements_linux.txt", "without nvidia-smi or rocminfo (its default)"),
    (Machine("linux", "x86_64", nvidia_smi=True, rocm=True), "requirements_linux.txt", "nvidia-smi is on PATH"),
    (Machine("linux", "x86_64", rocm=True), "requirements_linux_rocm.txt", "rocminfo is found"),
    (Machine("linux", "x86_64", nvidia_smi=True, xpu=True), "requirements_ipex_xpu.txt", "--use-ipex"),
    (Machine("linux", "x86_64", nvidia_smi=True, runpod=True), "requirements_runpod.txt", "RUNPOD_POD_ID"),
    (Machine("darwin", "arm64"), "requirements_macos_arm64.txt", "`uname -m` = arm64"),
    (Machine("darwin", "x86_64"), "requirements_macos_amd64.txt", "`uname -m` = x86_64"),
    (Machine("win32", "AMD64", nvidia_smi=True), "requirements_pytorch_windows.txt", "setup_windows.py"),
])
def test_checkout_files_pick_the_platform_file_as_kohya_setup_does(tmp_path, machine, expected, why):
    """kohya_ss 45088f04 setup.sh / gui.sh / setup/setup_windows.py, in their order of tests."""
    write_tree(tmp_path, {n: "" for n in KOHYA_FILES})
    files, note = checkout_files(tmp_path, "kohya_ss", machine)
    assert [p.name for p in files] == ["requirements.txt", expected]
    assert note.startswith(f"platform file {expected}: kohya_ss's ") and why in note
    assert checkout_files(tmp_path, "sd-scripts", machine) == ([tmp_path / "requirements.txt"], "")


def test_a_platform_file_the_checkout_lacks_is_named(tmp_path):
    write_tree(tmp_path, {"requirements.txt": ""})
    files, note = checkout_files(tmp_path, "kohya_ss", Machine("linux", "x86_64", rocm=True))
    assert files == [tmp_path / "requirements.txt"]
    assert note.startswith("platform file requirements_linux_rocm.txt (kohya_ss's setup.sh on Linux when rocminfo")
    assert note.endswith("is not in this checkout: only requirements.txt was read")


def test_build_specific_pins_name_their_device_and_compare_by_release(tmp_path):
    write_tree(tmp_path, {
        "requirements_linux.txt": "--extra-index-url https://download.pytorch.org/whl/cu128\ntorch==2.7.0+cu128\n"
                                  "xformers>=0.0.30\nbitsandbytes>=0.45.0\n",
        "requirements_macos_arm64.txt": "--pre --extra-index-url https://download.pytorch.org/whl/nightly/cpu\n"
                                        "torch==2.8.0.*\n",
        "requirements_linux_rocm.txt": "--extra-index-url https://download.pytorch.org/whl/rocm6.3\n"
                                       "torch==2.7.1+rocm6.3\n",
        "plain.txt": "torch==2.7.0\n"})

    def builds(name: str) -> list[str | None]:
        reqs = parse_files([tmp_path / name], env())
        return [reqs.build_of(p) for p in reqs.pins]
    # xformers has no local label: its file's PyTorch index says which build; bitsandbytes is not built on torch
    assert builds("requirements_linux.txt") == ["cuda", "cuda", None]
    assert builds("requirements_macos_arm64.txt") == ["cpu"]
    assert builds("requirements_linux_rocm.txt") == ["rocm"]
    assert builds("plain.txt") == [None]
    torch = parse_files([tmp_path / "requirements_linux.txt"], env()).find("torch")
    assert str(torch.release) == "==2.7.0" and torch.local_labels == ["cu128"]
    assert torch.release.contains("2.7.0+cu126") and torch.release.contains("2.7.0")
    assert not torch.release.contains("2.14.1+cu130") and not torch.allows("2.7.0+cu126")


@pytest.mark.parametrize(("machine", "device", "kind"), [
    (Machine("linux", "x86_64"), "auto", "cpu"),
    (Machine("linux", "x86_64", nvidia_smi=True), "auto", "cuda"),
    (Machine("linux", "x86_64", nvidia_smi=True), "cpu", "cpu"),
    (Machine("linux", "x86_64", rocm=True), "auto", "rocm"),
    (Machine("linux", "x86_64", rocm=True), "cuda", "rocm"),  # ROCm torch calls its device cuda
    (Machine("linux", "x86_64"), "cuda", "cuda"),
    (Machine("linux", "x86_64"), "xpu", "xpu"),
    (Machine("darwin", "arm64"), "auto", "mps"),
])
def test_the_device_a_build_must_be_for(machine, device, kind):
    assert device_of(machine, device) == kind


def test_a_build_for_another_device_is_not_this_machines():
    assert runs_here("cuda", "cuda") and runs_here("rocm", "rocm") and runs_here("cpu", "cpu")
    assert runs_here("cpu", "mps")  # PyTorch's macOS wheels come from the CPU index and carry MPS
    assert not any(runs_here("cuda", here) for here in ("cpu", "mps", "rocm", "xpu"))
    assert not runs_here("rocm", "cuda") and not runs_here("xpu", "cpu")


def test_deps_accept_in_the_config_file(tmp_path):
    (tmp_path / "lorasetup.toml").write_text('[deps]\naccept = ["accelerate>=1.11", "numpy"]\n')
    target = load_target(cwd=tmp_path, environ={})
    assert target.deps_accept == ["accelerate>=1.11", "numpy"]
    assert target.sources["deps_accept"] == str(tmp_path / "lorasetup.toml")
    (tmp_path / "pyproject.toml").write_text('[tool.lorasetup.deps]\naccept = ["accelerate>=1.11"]\n')
    (tmp_path / "lorasetup.toml").unlink()
    assert load_target(cwd=tmp_path, environ={}).deps_accept == ["accelerate>=1.11"]
    assert load_target(cwd=tmp_path, environ={"LORASETUP_DEPS_ACCEPT": "numpy>=2 'rich<15'"}).deps_accept == \
        ["numpy>=2", "rich<15"]


@pytest.mark.parametrize(("text", "message"), [
    ('[deps]\naccept = ["accelerate >= = 1.11"]\n',
     "bad value for `deps.accept` (['accelerate >= = 1.11']): 'accelerate >= = 1.11' is not a requirement like "
     "`accelerate>=1.11`"),
    ('[deps]\naccept = "accelerate>=1.11"\naceept = 1\n', "unknown key `deps.aceept`. Did you mean `deps.accept`?"),
    ('deps = ["accelerate>=1.11"]\n', '`deps` must be a table like [deps] accept = ["accelerate>=1.11"]'),
    ('[deps]\naccept = 3\n', "bad value for `deps.accept` (3): must be a list of requirements"),
])
def test_bad_deps_accept_names_the_file_and_the_fix(tmp_path, text, message):
    (tmp_path / "lorasetup.toml").write_text(text)
    with pytest.raises(ConfigError) as failed:
        load_target(cwd=tmp_path, environ={})
    assert str(failed.value).startswith(str(tmp_path / "lorasetup.toml"))
    assert message in str(failed.value)
