"""The hostile-input corpus: each case changes one thing of the good setup (tests/hostile/baseline.py) in a way a
careful person could meet, and says what lorasetup must answer. Each docstring says what sd-scripts does with the
same input; "verified" marks the ones run against the real sd-scripts 48d368fa (its config_util, DreamBoothDataset,
make_buckets and load_image on the same files, each under a 40 s timeout); the others are read from its source
(library/train_util.py, library/config_util.py, accelerate's launch.py and config_args.py).

lorasetup fails where sd-scripts fails or hangs, and raises no alarm where sd-scripts trains fine.
"""

from __future__ import annotations

import codecs
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.hostile.baseline import ANSWER_WITHIN_S, Setup

DATASET = ("dataset",)
TRAINING = ("args", "dataset", "model")


@dataclass(frozen=True)
class Expect:
    """What lorasetup answers: `check`'s status, words its text holds (the file and the problem), and the
    environment the run needs (`env`)."""

    check: str
    status: str  # fail | warn | ok
    words: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    after_listing: tuple[Path, Callable[[], None]] | None = None  # (folder, change made once lorasetup listed it)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Setup], Expect]
    only: tuple[str, ...]
    sd_scripts: str  # the docstring: what sd-scripts does
    as_user: bool = False  # permission bits matter: run without root's powers (through the CLI when root)
    within_s: float = ANSWER_WITHIN_S


CASES: list[Case] = []
# The device gate asks the training interpreter, which imports torch and accelerate first (the stack probe):
# about 2 s here, but past 20 s on a machine busy with other work, before lorasetup can answer anything about
# the accelerate config; the bound says "it answers", not how fast torch imports.
PROBE_WITHIN_S = 60.0


def case(only: tuple[str, ...] = DATASET, as_user: bool = False, within_s: float = ANSWER_WITHIN_S
         ) -> Callable[[Callable[[Setup], Expect]], Callable[[Setup], Expect]]:
    def register(make: Callable[[Setup], Expect]) -> Callable[[Setup], Expect]:
        assert make.__doc__, f"{make.__name__}: say what sd-scripts does"
        CASES.append(Case(make.__name__.replace("_", "-"), make, only, make.__doc__.strip(), as_user, within_s))
        return make
    return register


def fail(check: str, *words: str, **env: str) -> Expect:
    return Expect(check, "fail", words, env)


def warn(check: str, *words: str, **env: str) -> Expect:
    return Expect(check, "warn", words, env)


def fine(check: str, **env: str) -> Expect:
    return Expect(check, "ok", (), env)


def fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def replace_with_link(path: Path, to: str | Path) -> Path:
    path.unlink(missing_ok=True)
    path.symlink_to(to)
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of `size` NUL bytes that costs no disk and no time to make."""
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ----------------------------------------------------------------------------- odd entries in the image folder

@case()
def fifo_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): glob_images lists b.png, make_buckets -> get_image_size -> imagesize.get opens it and
    waits for a writer forever: the run hangs before the first step."""
    fifo(s.images / "b.png")
    return fail("dataset.images", "b.png", "is a named pipe (FIFO)", "waits on it forever")


@case()
def socket_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): imagesize.get's open fails, OSError: [Errno 6] No such device or address: crash."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(s.images / "b.png"))
    server.close()
    return fail("dataset.images", "b.png", "is a socket", "crashes")


@case()
def device_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): b.png -> /dev/null reads as 0 bytes, imagesize and Pillow find no size, make_buckets
    dies with ZeroDivisionError."""
    replace_with_link(s.images / "b.png", "/dev/null")
    return fail("dataset.images", "b.png", "is a character device", "ZeroDivisionError")


@case()
def folder_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): glob_images lists the folder b.png, opening it raises IsADirectoryError."""
    (s.images / "b.png").mkdir()
    return fail("dataset.images", "b.png", "folder named like an image")


@case()
def symlink_loop_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): glob lists the link, opening it raises OSError: Too many levels of symbolic links."""
    replace_with_link(s.images / "b.png", "b.png")
    return fail("dataset.images", "b.png", "symlink loop")


@case()
def dangling_symlink_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): glob lists the dead link, opening it raises FileNotFoundError."""
    replace_with_link(s.images / "b.png", "gone.png")
    return fail("dataset.images", "b.png", "broken symlink (to gone.png")


@case()
def link_to_the_parent_named_like_an_image(s: Setup) -> Expect:
    """sd-scripts (verified): up.png -> .. is a folder to open: IsADirectoryError."""
    replace_with_link(s.images / "up.png", "..")
    return fail("dataset.images", "up.png", "folder named like an image")


@case()
def fifo_with_a_name_sd_scripts_never_reads(s: Setup) -> Expect:
    """sd-scripts (verified): trains; glob_images only lists the image extensions, so notes.fifo is never opened."""
    fifo(s.images / "notes.fifo")
    return fine("dataset.images")


@case()
def fifo_beside_the_dataset(s: Setup) -> Expect:
    """sd-scripts: trains; nothing reads a pipe next to the dataset config or the image folder."""
    fifo(s.images.parent / "pipe")
    fifo(s.root / "log.pipe")
    return fine("dataset.steps")


@case()
def stray_files_that_are_not_images(s: Setup) -> Expect:
    """sd-scripts: trains; a README, a .DS_Store and an old checkpoint in the image folder are not images to it."""
    (s.images / "README.md").write_text("# my dataset\n")
    (s.images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    sparse(s.images / "old.ckpt", 1 << 30)
    return fine("dataset.images")


@case()
def self_symlink_in_the_image_folder(s: Setup) -> Expect:
    """sd-scripts (verified): trains; glob does not descend into img/self -> . (it does not recurse at all)."""
    (s.images / "self").symlink_to(".")
    return fine("dataset.images")


@case()
def deep_folder_tree_in_the_image_folder(s: Setup) -> Expect:
    """sd-scripts: trains on the three images at the top; glob_images does not recurse, so 150 nested folders
    (with images inside) are never read. lorasetup lists one level too and answers at once."""
    folder = s.images
    for _ in range(150):
        folder = folder / "d"
    folder.mkdir(parents=True)
    (folder / "deep.png").write_bytes(b"not read")
    return fine("dataset.images")


@case()
def image_folder_is_a_symlink_loop(s: Setup) -> Expect:
    """sd-scripts (verified): os.path.isdir is false: 'not directory', the subset is skipped and no data is left
    ('No data found', exit 0 without training)."""
    s.images.rename(s.images.with_name("img-real"))
    s.images.symlink_to(s.images.name)
    return fail("dataset.paths", "img", "symlink loop", "not directory")


@case()
def image_folder_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts: os.path.isdir is false: 'not directory', the subset is skipped, no data found."""
    s.images.rename(s.images.with_name("img-real"))
    os.mkfifo(s.images)
    return fail("dataset.paths", "img", "is a named pipe (FIFO), not a folder")


# ----------------------------------------------------------------------------- odd caption files

@case()
def fifo_as_a_caption(s: Setup) -> Expect:
    """sd-scripts (verified): read_caption tests os.path.isfile, false for a pipe, so a0.png trains on an empty
    caption with its 'No caption file found' warning; nothing blocks."""
    fifo(s.images / "a0.txt")
    return warn("dataset.captions", "a0.txt is a named pipe (FIFO), not a file", "skips it")


@case()
def folder_as_a_caption(s: Setup) -> Expect:
    """sd-scripts (verified): os.path.isfile is false for a folder: the image trains without that caption."""
    (s.images / "a0.txt").unlink()
    (s.images / "a0.txt").mkdir()
    return warn("dataset.captions", "a0.txt is a folder", "skips it")


@case()
def device_as_a_caption(s: Setup) -> Expect:
    """sd-scripts (verified): a0.txt -> /dev/zero is no regular file to os.path.isfile: skipped, never read."""
    replace_with_link(s.images / "a0.txt", "/dev/zero")
    return warn("dataset.captions", "a0.txt is a character device", "skips it")


@case()
def symlink_loop_as_a_caption(s: Setup) -> Expect:
    """sd-scripts (verified): os.path.isfile is false for a symlink loop: the image trains without a caption."""
    replace_with_link(s.images / "a0.txt", "a0.txt")
    return warn("dataset.captions", "a0.txt is a symlink loop", "skips it")


@case()
def caption_in_utf16(s: Setup) -> Expect:
    """sd-scripts (verified): opens captions as UTF-8: UnicodeDecodeError ('illegal char in file (not UTF-8)')."""
    (s.images / "a0.txt").write_bytes("tok, picture\n".encode("utf-16"))
    return fail("dataset.captions", "a0.txt", "UTF-16", "illegal char in file")


@case()
def caption_in_latin1(s: Setup) -> Expect:
    """sd-scripts: UnicodeDecodeError on byte 0xe9 ('illegal char in file (not UTF-8)')."""
    (s.images / "a0.txt").write_bytes("tok, café\n".encode("latin-1"))
    return fail("dataset.captions", "a0.txt", "not UTF-8 (byte 0xe9")


@case()
def caption_with_a_bom(s: Setup) -> Expect:
    """sd-scripts (verified): trains, but the caption reads '\\ufefftok, ...': the trigger word is not 'tok'."""
    (s.images / "a0.txt").write_bytes(codecs.BOM_UTF8 + b"tok, picture\n")
    return warn("dataset.captions", "UTF-8 BOM", "a0.txt")


@case()
def caption_with_windows_line_ends(s: Setup) -> Expect:
    """sd-scripts: trains; readlines() in text mode turns CRLF into LF."""
    (s.images / "a0.txt").write_bytes(b"tok, picture\r\nsecond line\r\n")
    return fine("dataset.captions")


@case()
def empty_caption(s: Setup) -> Expect:
    """sd-scripts: read_caption asserts lines: 'caption file is empty' stops the run while loading the dataset."""
    (s.images / "a0.txt").write_bytes(b"")
    return fail("dataset.captions", "a0.txt", "empty caption file")


@case()
def caption_of_a_gigabyte(s: Setup) -> Expect:
    """sd-scripts (verified): trains; it reads all of a 1 GiB caption into memory and uses its first line. lorasetup
    does not read past 16 MiB and warns."""
    sparse(s.images / "a0.txt", 1 << 30)
    return warn("dataset.captions", "a0.txt is 1,024.0 MiB", "reads all of it")


# ----------------------------------------------------------------------------- odd images by content and size

@case()
def image_of_a_gigabyte_of_zeros(s: Setup) -> Expect:
    """sd-scripts (verified): imagesize and Pillow find no size in b.png: ZeroDivisionError in make_buckets."""
    sparse(s.images / "b.png", 1 << 30)
    return fail("dataset.images", "b.png", "not an image")


# ----------------------------------------------------------------------------- the dataset config itself

@case()
def dataset_config_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts (verified): load_user_config tests Path.is_file(), false for a pipe: 'file not found'."""
    fifo(s.dataset)
    return fail("dataset.schema", "dataset.toml", "named pipe", "file not found")


@case()
def dataset_config_is_dev_zero(s: Setup) -> Expect:
    """sd-scripts (verified): Path.is_file() is false for a device: 'file not found' (it never reads /dev/zero)."""
    replace_with_link(s.dataset, "/dev/zero")
    return fail("dataset.schema", "dataset.toml", "character device", "file not found")


@case()
def dataset_config_is_a_folder(s: Setup) -> Expect:
    """sd-scripts (verified): Path.is_file() is false for a folder: 'file not found'."""
    s.dataset.unlink()
    s.dataset.mkdir()
    return fail("dataset.schema", "dataset.toml", "folder", "file not found")


@case()
def dataset_config_in_utf16(s: Setup) -> Expect:
    """sd-scripts (verified): toml.load opens it as UTF-8: UnicodeDecodeError at byte 0 (0xff)."""
    s.dataset.write_bytes(s.dataset.read_text().encode("utf-16"))
    return fail("dataset.schema", "dataset.toml", "UTF-16")


@case()
def dataset_config_with_a_bom(s: Setup) -> Expect:
    """sd-scripts (verified): toml.load keeps the BOM: TomlDecodeError 'Found invalid character in key name'."""
    s.dataset.write_bytes(codecs.BOM_UTF8 + s.dataset.read_bytes())
    return fail("dataset.schema", "dataset.toml", "byte-order mark")


@case()
def dataset_config_in_latin1(s: Setup) -> Expect:
    """sd-scripts (verified): UnicodeDecodeError on the 0xe9 of a latin-1 'é'."""
    s.dataset.write_bytes(b"# caf\xe9\n" + s.dataset.read_bytes())
    return fail("dataset.schema", "dataset.toml", "not UTF-8 (byte 0xe9 at offset 5")


@case()
def dataset_config_in_utf16_without_a_bom(s: Setup) -> Expect:
    """sd-scripts (verified, the NUL case): TomlDecodeError on the NUL bytes every other character."""
    s.dataset.write_bytes(s.dataset.read_text().encode("utf-16-le"))
    return fail("dataset.schema", "dataset.toml", "NUL character")


@case()
def dataset_json_with_a_bom(s: Setup) -> Expect:
    """sd-scripts (verified): json.load raises 'Unexpected UTF-8 BOM (decode using utf-8-sig)'."""
    path = s.dataset.with_suffix(".json")
    path.write_bytes(codecs.BOM_UTF8 + f'{{"datasets": [{{"subsets": [{{"image_dir": "{s.images}"}}]}}]}}'.encode())
    s.write_train(dataset_config=f'"{path}"')
    return fail("dataset.schema", "dataset.json", "byte-order mark")


@case()
def dataset_config_nested_2000_deep(s: Setup) -> Expect:
    """sd-scripts (verified): toml's parser recurses and dies with RecursionError."""
    s.dataset.write_text(s.dataset.read_text() + f"junk = {nested(2000)}\n")
    return fail("dataset.schema", "dataset.toml", "levels deep")


@case()
def dataset_config_nested_inline_tables(s: Setup) -> Expect:
    """sd-scripts (verified): RecursionError in toml's inline-table parser."""
    s.dataset.write_text(s.dataset.read_text().replace("[general]", "[general]\njunk = " + "{a=" * 1000 + "1"
                                                       + "}" * 1000))
    return fail("dataset.schema", "dataset.toml", "levels deep")


@case()
def dataset_config_nested_150_deep_in_a_known_key(s: Setup) -> Expect:
    """sd-scripts: toml parses 150 levels, then the ConfigSanitizer rejects the value of resolution (Invalid user
    config): it stops at start either way."""
    s.dataset.write_text(s.dataset.read_text().replace("resolution = 512", f"resolution = {nested(150)}"))
    return fail("dataset.schema", "dataset.toml", "more than 100 levels deep")


@case()
def dataset_config_dotted_key_3000_deep(s: Setup) -> Expect:
    """sd-scripts (verified): toml parses the dotted key; the sanitizer stops: extra keys not allowed @ data['x']."""
    s.dataset.write_text(s.dataset.read_text() + "[x]\n" + ".".join(["a"] * 3000) + " = 1\n")
    return fail("dataset.schema", "dataset.toml", "levels deep")


@case()
def dataset_json_nested_100000_deep(s: Setup) -> Expect:
    """sd-scripts (verified): json.load raises RecursionError."""
    path = s.dataset.with_suffix(".json")
    path.write_text(nested(100_000))
    s.write_train(dataset_config=f'"{path}"')
    return fail("dataset.schema", "dataset.json", "levels deep")


@case()
def dataset_config_of_a_gigabyte(s: Setup) -> Expect:
    """sd-scripts (verified with 200 MB): toml.load reads it all, then TomlDecodeError on the first NUL."""
    sparse(s.dataset, 1 << 30)
    return fail("dataset.schema", "dataset.toml", "over the 16 MiB")


@case()
def empty_dataset_config(s: Setup) -> Expect:
    """sd-scripts: an empty TOML is {}: no datasets, 'No data found', exit 0 without training."""
    s.dataset.write_bytes(b"")
    return fail("dataset.paths", "dataset.toml", "No data found")


# ----------------------------------------------------------------------------- the training config

@case(TRAINING)
def training_config_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts (verified: train_network.py --config_file <pipe> still waited after 60 s, its last line 'Loading
    settings from ...'): read_config_from_file tests os.path.exists (true for a pipe), then open() waits forever."""
    fifo(s.train)
    return fail("args.known", "train.toml", "named pipe", "waits forever")


@case(TRAINING)
def training_config_is_dev_urandom(s: Setup) -> Expect:
    """sd-scripts: os.path.exists is true, toml.load reads random bytes until it fails to decode them."""
    replace_with_link(s.train, "/dev/urandom")
    return fail("args.known", "train.toml", "character device")


@case(TRAINING)
def training_config_in_utf16(s: Setup) -> Expect:
    """sd-scripts: open(config_path, encoding='utf-8') + toml.load: UnicodeDecodeError at byte 0."""
    s.train.write_bytes(s.train.read_text().encode("utf-16"))
    return fail("args.known", "train.toml", "UTF-16")


@case(TRAINING)
def training_config_with_a_bom(s: Setup) -> Expect:
    """sd-scripts (verified, as for the dataset config): TomlDecodeError on the BOM."""
    s.train.write_bytes(codecs.BOM_UTF8 + s.train.read_bytes())
    return fail("args.known", "train.toml", "byte-order mark")


@case(TRAINING)
def training_config_nested_2000_deep(s: Setup) -> Expect:
    """sd-scripts (verified, same parser): RecursionError in toml.load."""
    s.train.write_text(s.train.read_text() + f"junk = {nested(2000)}\n")
    return fail("args.known", "train.toml", "levels deep")


# ----------------------------------------------------------------------------- the base model

@case(("model",))
def base_model_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts: _load_target_model tests os.path.isfile (false for a pipe), takes the path for a Diffusers
    name and stops: 'model is not found as a file or in Hugging Face'."""
    fifo(s.model)
    return fail("model.file", "model.safetensors", "named pipe")


@case(("model",))
def base_model_is_dev_zero(s: Setup) -> Expect:
    """sd-scripts: os.path.isfile is false for a device: 'model is not found as a file or in Hugging Face'."""
    replace_with_link(s.model, "/dev/zero")
    return fail("model.file", "model.safetensors", "character device")


@case(("model",))
def empty_base_model(s: Setup) -> Expect:
    """sd-scripts: safetensors raises HeaderTooSmall on a 0-byte file."""
    s.model.write_bytes(b"")
    return fail("model.file", "model.safetensors", "only 0 bytes")


@case(("model",))
def base_model_header_claims_a_terabyte(s: Setup) -> Expect:
    """sd-scripts: safetensors raises HeaderTooLarge (the first 8 bytes promise a header of 2**40 bytes)."""
    s.model.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    return fail("model.file", "model.safetensors", "promise a 1099511627776-byte header")


# ----------------------------------------------------------------------------- prompts, requirements, accelerate

@case(("args.output",))
def prompt_file_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts: sample_images_common tests os.path.isfile (false for a pipe), logs 'No prompt file' and
    trains without sample images."""
    fifo(s.prompts)
    return warn("args.output", "prompts.txt", "named pipe", "No prompt file")


@case(("args.output",))
def prompt_file_in_latin1(s: Setup) -> Expect:
    """sd-scripts: load_prompts opens it as UTF-8 at the first sample: UnicodeDecodeError, minutes into the run."""
    s.prompts.write_bytes("un café, tok\n".encode("latin-1"))
    return fail("args.output", "prompts.txt", "not UTF-8", "first sample")


@case(("args.output",))
def prompt_toml_nested_2000_deep(s: Setup) -> Expect:
    """sd-scripts: load_prompts' toml.load raises RecursionError at the first sample."""
    path = s.prompts.with_suffix(".toml")
    path.write_text(f"[prompt]\njunk = {nested(2000)}\n")
    s.write_train(sample_prompts=f'"{path}"')
    return fail("args.output", "prompts.toml", "levels deep")


@case(("deps.versions",))
def requirements_file_is_a_fifo(s: Setup) -> Expect:
    """sd-scripts: trains; the run never reads requirements.txt (only `pip install -r` would wait on the pipe)."""
    fifo(s.checkout / "requirements.txt")
    return warn("deps.versions", "requirements.txt", "named pipe", "not compared")


@case(("deps.versions",))
def requirements_file_in_utf16(s: Setup) -> Expect:
    """sd-scripts: trains (it never reads the file); pip reads UTF-16 with a BOM (auto_decode), and so does
    lorasetup: the pins are compared as usual."""
    req = s.checkout / "requirements.txt"
    req.write_bytes(req.read_text().encode("utf-16"))
    return fine("deps.versions")


@case(("device.accelerate",), within_s=PROBE_WITHIN_S)
def accelerate_config_is_a_fifo(s: Setup) -> Expect:
    """accelerate launch --config_file: load_config_from_file tests os.path.isfile (false for a pipe) and stops
    with 'The passed configuration file ... does not exist'."""
    path = fifo(s.root / "accelerate.yaml")
    s.extra += ["--accelerate-config", str(path), "--device", "cpu"]
    return fail("device.accelerate", "accelerate.yaml", "named pipe")


@case(("device.accelerate",), within_s=PROBE_WITHIN_S)
def default_accelerate_config_is_a_fifo(s: Setup) -> Expect:
    """accelerate launch: reads the default config only when os.path.isfile says so (false for a pipe), so the run
    starts with accelerate's defaults: nothing to alarm about, and nothing blocks."""
    hf_home = s.root / "hf"
    (hf_home / "accelerate").mkdir(parents=True)
    fifo(hf_home / "accelerate" / "default_config.yaml")
    s.extra += ["--device", "cpu"]
    return fine("device.accelerate", HF_HOME=str(hf_home))


# ----------------------------------------------------------------------------- permissions (without root's powers)

@case(as_user=True)
def unreadable_image(s: Setup) -> Expect:
    """sd-scripts (verified, as a user without root's powers): imagesize.get raises PermissionError: crash."""
    (s.images / "a1.png").chmod(0)
    return fail("dataset.images", "a1.png", "permission denied")


@case(as_user=True)
def unreadable_caption(s: Setup) -> Expect:
    """sd-scripts (verified): os.path.isfile is true, open() raises PermissionError while loading the dataset."""
    (s.images / "a1.txt").chmod(0)
    return fail("dataset.captions", "a1.txt", "permission denied")


@case(as_user=True)
def unreadable_dataset_config(s: Setup) -> Expect:
    """sd-scripts (verified): toml.load raises PermissionError at start."""
    s.dataset.chmod(0)
    return fail("dataset.schema", "dataset.toml", "permission denied")


@case(as_user=True)
def unsearchable_image_folder(s: Setup) -> Expect:
    """sd-scripts (verified): the folder can be listed (r) but not entered (no x): glob lists the images, opening
    the first raises PermissionError."""
    s.images.chmod(0o644)
    return fail("dataset.images", "a0.png", "permission denied")


@case(TRAINING, as_user=True)
def unreadable_training_config(s: Setup) -> Expect:
    """sd-scripts: os.path.exists is true, open() raises PermissionError at start."""
    s.train.chmod(0)
    return fail("args.known", "train.toml", "permission denied")


@case(("model",), as_user=True)
def unreadable_base_model(s: Setup) -> Expect:
    """sd-scripts: os.path.isfile is true, safetensors' open raises PermissionError while loading the model."""
    s.model.chmod(0)
    return fail("model.file", "model.safetensors", "permission denied")


# ----------------------------------------------------------------------------- files that change mid-scan

def mid_scan(expect: Expect, folder: Path, change: Callable[[], None]) -> Expect:
    return Expect(expect.check, expect.status, expect.words, expect.env, (folder, change))


@case()
def image_vanishes_after_the_listing(s: Setup) -> Expect:
    """sd-scripts: glob_images lists a1.png, then get_image_size opens it: FileNotFoundError if it went away in
    between (something is changing the folder while the run starts)."""
    return mid_scan(fail("dataset.images", "a1.png", "vanished"), s.images, (s.images / "a1.png").unlink)


@case()
def caption_vanishes_after_the_listing(s: Setup) -> Expect:
    """sd-scripts: read_caption would see no caption (os.path.isfile) or crash if it went away between its test
    and its open(); lorasetup saw the folder change under it and says so."""
    return mid_scan(fail("dataset.captions", "a1.txt", "vanished"), s.images, (s.images / "a1.txt").unlink)


@case()
def image_swapped_for_a_fifo_after_the_listing(s: Setup) -> Expect:
    """sd-scripts: a pipe that replaces a1.png after glob_images listed it makes imagesize.get wait forever.
    lorasetup opens with O_NONBLOCK, so the swap cannot block it, and names the pipe."""
    return mid_scan(fail("dataset.images", "a1.png", "named pipe"), s.images, lambda: fifo(s.images / "a1.png"))


@case()
def image_folder_moved_away_after_the_listing(s: Setup) -> Expect:
    """sd-scripts: glob_images listed the folder, then opening its first image raises FileNotFoundError."""
    return mid_scan(fail("dataset.images", "a0.png", "vanished"), s.images,
                    lambda: s.images.rename(s.images.with_name("moved")))


@case(as_user=True)
def unlistable_image_folder(s: Setup) -> Expect:
    """sd-scripts (verified): os.path.isdir is true but glob cannot list the folder and finds nothing, silently:
    the subset has no images, 'No data found', exit 0 without training."""
    s.images.chmod(0)
    return fail("dataset.images", "img", "cannot be listed: Permission denied", "finds nothing there")
