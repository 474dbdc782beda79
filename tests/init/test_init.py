"""`lorasetup init` on real folders of Pillow images: the seed's layout in both forms gives the seed's dataset
config and its 460 steps per epoch; flat folders; every bad folder people bring (mixed caption extensions, empty
folders, images with neither caption nor class token, non-image files, names sd-scripts misreads) is reported
with its fix and nothing is written; existing files are never overwritten without --force, which backs them up.

The preflight at the end runs for real; the training interpreter is a bare venv (no torch), so its probe answers
in a moment. sd-scripts itself is not a test dependency: without a checkout the schema comes from lorasetup's
built-in copy of sd-scripts' tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from lorasetup.cli import main
from lorasetup.engine.context import Context
from lorasetup.engine.target import Target, tomllib
from lorasetup.sd.dataset.blueprint import KINDS
from lorasetup.sd.dataset.plan import compute_steps, dataset_plan

README = Path(__file__).resolve().parents[2] / "README.md"
SEED_LINE = "spyke_plasma_v1, an electric blue spike, foggy room"


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter without torch: the preflight's device probe fails fast instead of importing torch."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/kohya_ss or ~/models of the machine running the tests, and no CI-dependent prompt."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CI", raising=False)
    for name in [n for n in os.environ if n.startswith("LORASETUP_")]:
        monkeypatch.delenv(name)


def image(path: Path, size: tuple[int, int] = (512, 512)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 200)).save(path)
    return path


def images(folder: Path, count: int, caption: str | None = None, ext: str = ".txt", prefix: str = "img",
           size: tuple[int, int] = (512, 512)) -> list[Path]:
    made = []
    for i in range(count):
        made.append(image(folder / f"{prefix}_{i:03d}.png", size))
        if caption is not None:
            (folder / f"{prefix}_{i:03d}{ext}").write_text(caption.format(i=i) + "\n", encoding="utf-8")
    return made


def seed(root: Path, kohya: bool = False) -> tuple[Path, Path]:
    """The seed's data: 23 captioned images and 100 reg images without captions."""
    train = root / "img" / ("10_spyke_plasma_v1" if kohya else "")
    reg = root / "reg" / ("1_anime_character" if kohya else "")
    images(train, 23, SEED_LINE + ", view {i}", prefix="spyke")
    images(reg, 100, prefix="reg")
    return train, reg


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


def meaning(config: Path) -> tuple[list[dict], dict]:
    """What sd-scripts makes of a dataset config: every resolved subset setting, and the step plan."""
    with Context(Target(dataset_config=config)) as ctx:
        subsets = [{key: s.get.get(key) for key in sorted(KINDS)} for s in dataset_plan(ctx).subsets]
        return subsets, compute_steps(ctx).data()


def seed_toml(train: Path, reg: Path) -> str:
    """The dataset TOML the seed wrote by hand, as README.md shows it, pointed at this test's folders."""
    text = README.read_text(encoding="utf-8").split("with the dataset TOML the seed wrote by hand")[1]
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    return block.replace("/Users/me/lora/spyke/img", str(train)).replace("/Users/me/lora/spyke/reg", str(reg))


def test_seed_layout_gives_the_seeds_dataset_and_460_steps(tmp_path, capsys, bare_python):
    root = tmp_path / "spyke"
    train, reg = seed(root)
    code, _, err = init(capsys, str(root), "--python", str(bare_python), "--device", "mps", "--epochs", "2",
                        "--launch-args", "--num_cpu_threads_per_process 2", "--rendezvous-timeout", "90")
    assert "460 steps per epoch; 920 steps = 2 epochs; saves at 230, 460, 690, 920" in err
    assert "✓ dataset.schema" in err and "✓ dataset.steps        460 steps per epoch" in err
    written = root / "dataset.toml"
    (tmp_path / "seed.toml").write_text(seed_toml(train, reg))
    assert meaning(written) == meaning(tmp_path / "seed.toml")
    data = tomllib.loads(written.read_text())
    assert data["general"] == {"enable_bucket": True, "caption_extension": ".txt", "keep_tokens": 1}
    assert "flip_aug" not in str(data)
    config = tomllib.loads((root / "lorasetup.toml").read_text())
    assert config["device"] == "mps" and config["dataset_config"] == "dataset.toml"
    assert config["launch_args"] == ["--num_cpu_threads_per_process", "2"] and config["rendezvous_timeout"] == 90.0
    assert config["train_args"][1:4] == ["--no_half_vae", "--mixed_precision=no", "--optimizer_type=AdamW"]
    assert "--max_train_steps=920" in config["train_args"] and "--save_every_n_steps=230" in config["train_args"]
    assert code == 1  # the preflight fails: no checkout and no base model (named in the output)
    assert "✗ repo.root" in err and "✗ model.file" in err


def test_kohya_folders_give_repeats_and_class_tokens_from_their_names(tmp_path, capsys, bare_python):
    root = tmp_path / "lora"
    train, reg = seed(root, kohya=True)
    code, _, err = init(capsys, str(root), "--python", str(bare_python), "--device", "cpu", "--epochs", "2")
    data = tomllib.loads((root / "dataset.toml").read_text())
    assert data["datasets"][0]["subsets"] == [
        {"image_dir": str(train), "num_repeats": 10},
        {"image_dir": str(reg), "is_reg": True, "num_repeats": 1, "class_tokens": "anime_character"}]
    (tmp_path / "seed.toml").write_text(seed_toml(train, reg))
    ours, plan = meaning(root / "dataset.toml")
    seeds, seed_plan = meaning(tmp_path / "seed.toml")
    assert plan == seed_plan and plan["steps_per_epoch"] == 460
    seeds[1]["class_tokens"] = "anime_character"  # the one difference: reg images train on the folder's class
    assert ours == seeds
    assert "460 steps per epoch" in err
    assert "✓ dataset.captions" in err  # no "marked is_reg" warning for reg/1_anime_character


def test_flat_folder_of_captioned_images(tmp_path, capsys, bare_python):
    images(tmp_path / "me", 6, "ohwx person, portrait {i}", ext=".caption", size=(768, 1024))
    code, _, err = init(capsys, str(tmp_path / "me"), "--python", str(bare_python), "--device", "cpu",
                        "--repeats", "3", "--steps", "100", "--saves", "3")
    data = tomllib.loads((tmp_path / "me" / "dataset.toml").read_text())
    assert data["general"]["caption_extension"] == ".caption" and data["general"]["keep_tokens"] == 1
    assert data["datasets"][0]["subsets"] == [{"image_dir": str(tmp_path / "me"), "num_repeats": 3}]
    assert "18 steps per epoch; 100 steps = 6 epochs; saves at 34, 68, 100" in err


def test_pointed_at_one_kohya_folder(tmp_path, capsys, bare_python):
    folder = tmp_path / "img" / "4_ohwx"
    images(folder, 3)
    code, _, err = init(capsys, str(folder), "--python", str(bare_python), "--device", "cpu", "--dry-run")
    assert ".                        3 images x 4 repeats (folder name), no captions, class tokens 'ohwx'" in err
    images(tmp_path / "2024 trip", 2, "me, beach")  # a name that starts with a number, given as the folder
    code, _, err = init(capsys, str(tmp_path / "2024 trip"), "--device", "cpu", "--dry-run")
    assert code == 0 and "2 images x 10 repeats (--repeats)" in err


def test_mixed_caption_extensions_are_reported_not_guessed(tmp_path, capsys):
    folder = tmp_path / "data"
    images(folder, 3, "a, b", ext=".txt", prefix="a")
    images(folder, 2, "a, b", ext=".caption", prefix="b")
    code, _, err = init(capsys, str(folder))
    assert code == 1 and "caption files with different extensions (3 .txt, 2 .caption)" in err
    assert 'for f in *.caption; do mv -- "$f" "${f%.caption}.txt"; done' in err
    assert "nothing written" in err and not (folder / "dataset.toml").exists()


def test_images_with_both_caption_files_need_a_choice(tmp_path, capsys, bare_python):
    folder = tmp_path / "data"
    images(folder, 3, "tagger, tags", ext=".txt")
    for i in range(3):
        (folder / f"img_{i:03d}.caption").write_text("a photo of a thing\n")
    code, _, err = init(capsys, str(folder))
    assert code == 1 and "3 images have both" in err and "pass --caption-extension .caption (or .txt)" in err
    init(capsys, str(folder), "--caption-extension", ".caption", "--python", str(bare_python), "--device", "cpu")
    data = tomllib.loads((folder / "dataset.toml").read_text())
    assert data["general"]["caption_extension"] == ".caption" and "keep_tokens" not in data["general"]


def test_empty_folders(tmp_path, capsys, bare_python):
    (tmp_path / "nothing").mkdir()
    code, _, err = init(capsys, str(tmp_path / "nothing"))
    assert code == 1 and "no images that sd-scripts reads" in err
    code, _, err = init(capsys, str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err
    root = tmp_path / "lora"
    (root / "img" / "10_empty").mkdir(parents=True)
    images(root / "img" / "5_char", 4, "char, smiling")
    code, _, err = init(capsys, str(root), "--python", str(bare_python), "--device", "cpu")
    assert "! img/10_empty: is empty: no images sd-scripts reads, so it is left out" in err
    subsets = tomllib.loads((root / "dataset.toml").read_text())["datasets"][0]["subsets"]
    assert [s["image_dir"] for s in subsets] == [str(root / "img" / "5_char")]


def test_only_reg_images_is_no_training_data(tmp_path, capsys):
    images(tmp_path / "set" / "reg", 3)
    code, _, err = init(capsys, str(tmp_path / "set"))
    assert code == 1 and "only regularization images" in err


@pytest.mark.parametrize("folder, words", [
    ("plain", "put them in a folder named <repeats>_<trigger>"),
    ("10_", "have neither a caption nor a class token"),
])
def test_images_with_neither_caption_nor_class_token(tmp_path, capsys, folder, words):
    images(tmp_path / "set" / folder, 2)
    code, _, err = init(capsys, str(tmp_path / "set"))
    assert code == 1 and "have neither a caption nor a class token" in err and words in err
    assert not (tmp_path / "set" / "dataset.toml").exists()


def test_partly_captioned_kohya_folder_trains_the_rest_on_its_class_tokens(tmp_path, capsys, bare_python):
    folder = tmp_path / "set" / "img" / "10_sks dog"
    images(folder, 3, "sks dog, sitting")
    image(folder / "extra.png")
    _, _, err = init(capsys, str(tmp_path / "set"), "--python", str(bare_python), "--device", "cpu")
    subset = tomllib.loads((tmp_path / "set" / "dataset.toml").read_text())["datasets"][0]["subsets"][0]
    assert subset["class_tokens"] == "sks dog" and subset["num_repeats"] == 10
    assert "1 of 4 images have no .txt caption and train on the class tokens 'sks dog': extra.png" in err


def test_non_image_files_are_reported_and_left_out(tmp_path, capsys, bare_python):
    folder = tmp_path / "set"
    images(folder, 3, "trig, x")
    (folder / "notes.md").write_text("my notes\n")
    (folder / "Thumbs.db").write_bytes(b"\0\1")
    Image.new("RGB", (64, 64)).save(folder / "anim.gif")
    image(folder / "Mixed.Jpg")
    code, _, err = init(capsys, str(folder), "--python", str(bare_python), "--device", "cpu")
    assert "sd-scripts skips 2 files (Mixed.Jpg, anim.gif)" in err
    assert "2 files (Thumbs.db, notes.md) are neither images nor captions" in err
    assert "3 images x 10 repeats" in err and (folder / "dataset.toml").exists()


def test_folder_names_sd_scripts_would_misread(tmp_path, capsys, bare_python):
    root = tmp_path / "set"
    images(root / "img" / "10spyke", 2, "spyke, a")
    code, _, err = init(capsys, str(root))
    assert code == 1 and "folder name '10spyke' starts with a number but not `<repeats>_`" in err
    assert "mv img/10spyke img/10_spyke" in err and not (root / "dataset.toml").exists()
    (root / "img" / "10spyke").rename(root / "img" / "10_")
    code, _, err = init(capsys, str(root), "--python", str(bare_python), "--device", "cpu")
    assert "! img/10_: folder name '10_' has no name after the repeats" in err and "mv img/10_ img/10_name" in err
    assert tomllib.loads((root / "dataset.toml").read_text())["datasets"][0]["subsets"][0]["num_repeats"] == 10


def test_never_overwrites_without_force_and_backs_up_with_it(tmp_path, capsys, bare_python):
    folder = tmp_path / "set"
    images(folder, 2, "trig, a")
    (folder / "dataset.toml").write_text("# mine\n")
    code, _, err = init(capsys, str(folder), "--python", str(bare_python), "--device", "cpu")
    assert code == 2 and "already exists: nothing written. Pass --force" in err
    assert (folder / "dataset.toml").read_text() == "# mine\n" and not (folder / "lorasetup.toml").exists()
    code, out, err = init(capsys, str(folder), "--dry-run", "--device", "cpu")
    assert code == 0 and "dry run: nothing written" in err
    assert f"# ---- {folder / 'dataset.toml'}" in out and "[[datasets.subsets]]" in out and "train_args = [" in out
    assert (folder / "dataset.toml").read_text() == "# mine\n" and not (folder / "lorasetup.toml").exists()
    (folder / "lorasetup.toml").write_text("kohya_rot = '/x'\n")  # a typo'd config is replaced, not read
    code, _, err = init(capsys, str(folder), "--force", "--python", str(bare_python), "--device", "cpu", "--flip-aug")
    assert "✓ dataset.schema" in err
    backups = list(folder.glob("dataset.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "# mine\n"
    assert [p.read_text() for p in folder.glob("lorasetup.toml.bak-*")] == ["kohya_rot = '/x'\n"]
    assert tomllib.loads((folder / "dataset.toml").read_text())["general"]["flip_aug"] is True


def test_out_folder_and_paths_that_need_escapes(tmp_path, capsys, bare_python):
    folder = tmp_path / "it's here" / "10_o'neil \\ co"
    images(folder, 2, "oneil, x")
    out = tmp_path / "configs"
    init(capsys, str(tmp_path / "it's here"), "--out", str(out), "--python", str(bare_python), "--device", "cpu")
    err = capsys.readouterr().err
    text = (out / "dataset.toml").read_text()
    assert tomllib.loads(text)["datasets"][0]["subsets"][0]["image_dir"] == str(folder)
    assert '"' + str(folder).replace("\\", "\\\\") + '"' in text  # a basic string: the path holds a quote
    assert not (tmp_path / "it's here" / "dataset.toml").exists()
    assert "✗ dataset.schema" not in err


def test_resolution_follows_the_model_family_and_the_images(tmp_path, capsys, bare_python):
    model = tmp_path / "models" / "xl.safetensors"
    model.parent.mkdir()
    save_file({"conditioner.embedders.1.model.ln_final.weight": np.zeros(4, np.float16),
               "model.diffusion_model.input_blocks.0.0.weight": np.zeros((8, 4, 3, 3), np.float16)}, str(model))
    folder = tmp_path / "set"
    images(folder, 3, "trig, a", size=(768, 768))
    image(folder / "big.png", (1024, 1024)).with_suffix(".txt").write_text("trig, b\n")
    code, out, err = init(capsys, str(folder), "--python", str(bare_python), "--device", "cpu", "--dry-run")
    assert "resolution = 768  # lowered from 1024: only 1 of 4 training images are that big" in out
    assert "min_bucket_reso = 384" in out and "max_bucket_reso = 1536" in out
    assert "script = \"sdxl_train_network.py\"  # for SDXL base" in out
    assert f"base_model = '{model}'  # found" in out


def test_prompt_on_a_terminal_asks_once(tmp_path, bare_python):
    pty = pytest.importorskip("pty")
    folder = tmp_path / "set"
    images(folder, 2, "trig, a")
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    proc = subprocess.Popen([sys.executable, "-m", "lorasetup.cli", "init", str(folder), "--python", str(bare_python),
                             "--device", "cpu"], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "HOME": str(tmp_path / "home"), "NO_COLOR": "1"})
    os.close(terminal)
    os.write(controller, b"n\n")
    _, err = proc.communicate(timeout=60)
    os.close(controller)
    assert proc.returncode == 1 and b"and lorasetup.toml? [Y/n] nothing written" in err
    assert not (folder / "dataset.toml").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    images(tmp_path / "set", 1, "a")
    for args in (["--repeats", "0"], ["--caption-extension", "txt"], ["--dataset-config", "x.toml"],
                 ["--epochs", "2", "--steps", "9"]):
        code, _, err = init(capsys, str(tmp_path / "set"), *args)
        assert code == 2, args
    assert not (tmp_path / "set" / "dataset.toml").exists()


def test_finds_the_checkout_beside_the_folder_and_the_device_this_machine_offers(tmp_path, capsys, make_kohya):
    root = make_kohya("populated")  # tmp_path/kohya_ss, beside the dataset folder
    images(tmp_path / "spyke", 2, "trig, a")
    code, out, err = init(capsys, str(tmp_path / "spyke"), "--python", sys.executable, "--dry-run")
    assert f"kohya_root = '{root}'  # found" in out
    assert re.search(r'device = "cpu"  # what this machine offers; torch \S+, CPU-only build', out), out


def test_finds_kohya_ss_in_home_and_its_venv(tmp_path, capsys, make_kohya, monkeypatch):
    root = make_kohya("populated")  # tmp_path/kohya_ss
    monkeypatch.setenv("HOME", str(tmp_path))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    images(tmp_path / "lora" / "spyke", 2, "trig, a")
    code, out, err = init(capsys, str(tmp_path / "lora" / "spyke"), "--dry-run")
    assert f"kohya_root = '{root}'  # found" in out
    assert f"python = '{root / 'venv' / 'bin' / 'python'}'  # found" in out
    assert 'device = "cpu"  # what this machine offers; torch not importable' in out


def test_folder_name_that_is_not_utf8_is_refused(tmp_path, capsys):
    root = tmp_path / "set"
    root.mkdir()
    try:
        os.mkdir(os.fsencode(root) + b"/10_caf\xe9")
    except OSError:
        pytest.skip("this file system accepts only valid UTF-8 names")
    image(Path(os.fsdecode(os.fsencode(root) + b"/10_caf\xe9/a.png")))
    code, _, err = init(capsys, str(root))
    assert code == 1 and "the folder's name is not valid UTF-8" in err
