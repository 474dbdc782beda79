"""The files sd-scripts reads for a dataset: folder listings (train_util.glob_images), image headers
(train_util.BaseDataset.get_image_size, Pillow's limits) and caption files (DreamBoothDataset's read_caption,
BaseDataset.process_caption's kept tokens)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import imagesize

from lorasetup.engine import files
from lorasetup.sd import facts as sdfacts

# Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS); sd-scripts does not change it, so
# Image.open raises DecompressionBombError above twice this and warns above it.
PIL_MAX_PIXELS = 89_478_485
# What sd-scripts picks up only when an optional Pillow plugin imports (library/train_util.py).
PLUGIN_EXTENSIONS = {".avif": "pillow-avif-plugin", ".AVIF": "pillow-avif-plugin",
                     ".jxl": "pillow-jxl-plugin or jxlpy", ".JXL": "pillow-jxl-plugin or jxlpy"}
OTHER_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".jfif", ".psd", ".tga", ".svg")
NOT_CAPTIONS = ((".npz", ".json", ".safetensors", ".toml", ".db", ".ini")
                + tuple(e.lower() for e in sdfacts.IMAGE_EXTENSIONS))
WINDOWS = os.name == "nt"


# ----------------------------------------------------------------------------- directory listings

@dataclass
class DirScan:
    """One image folder as sd-scripts' glob sees it."""

    path: Path
    error: str | None = None
    images: list[str] = field(default_factory=list)        # names glob_images picks up, in its order
    image_named_dirs: list[str] = field(default_factory=list)  # picked up, but folders
    lookalikes: list[str] = field(default_factory=list)     # image files glob skips (.Jpg, .gif, ...)
    plugin_only: list[str] = field(default_factory=list)    # .avif / .jxl: only with a Pillow plugin
    files: set[str] = field(default_factory=set)            # regular files, for caption lookups
    extensions: dict[str, set[str]] = field(default_factory=dict)  # stem -> non-image extensions present


def _picked_up(name: str) -> bool:
    """glob.glob(dir/'*' + ext) for each IMAGE_EXTENSIONS entry: `*` skips dot-files; fnmatch is case-
    sensitive except on Windows."""
    if name.startswith("."):
        return False
    if WINDOWS:
        return name.lower().endswith(tuple(e.lower() for e in sdfacts.IMAGE_EXTENSIONS))
    return name.endswith(sdfacts.IMAGE_EXTENSIONS)


def scan_dir(directory: Path) -> DirScan:
    scan = DirScan(directory)
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        scan.error = "does not exist"
        return scan
    except NotADirectoryError:
        scan.error = "is a file, not a folder"
        return scan
    except OSError as exc:
        scan.error = f"cannot be listed: {exc.strerror}"
        return scan
    lower_exts = {e.lower() for e in sdfacts.IMAGE_EXTENSIONS}
    for entry in entries:
        name = entry.name
        try:  # both follow symlinks: a symlink loop raises OSError (ELOOP) and is neither
            is_file = entry.is_file()
            is_dir = not is_file and entry.is_dir()
        except OSError:
            is_file = is_dir = False
        stem, ext = os.path.splitext(name)
        if _picked_up(name):
            (scan.images if not is_dir else scan.image_named_dirs).append(name)
            continue
        if not is_file or name.startswith("."):
            continue
        scan.files.add(name)
        if ext in PLUGIN_EXTENSIONS:
            scan.plugin_only.append(name)
        elif ext.lower() in lower_exts or ext.lower() in OTHER_IMAGE_EXTENSIONS:
            scan.lookalikes.append(name)
        elif ext:
            scan.extensions.setdefault(stem, set()).add(ext)
    scan.images.sort()
    scan.lookalikes.sort()
    return scan


# ----------------------------------------------------------------------------- image headers

SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("png", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("jpeg", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("webp", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"),
    ("bmp", lambda h: h.startswith(b"BM")),
    ("gif", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
    ("tiff", lambda h: h[:4] in (b"II*\x00", b"MM\x00*")),
    ("avif", lambda h: h[4:12] in (b"ftypavif", b"ftypavis")),
    ("heic", lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"mif1", b"msf1")),
    ("jxl", lambda h: h.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "))),
)
EXTENSION_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".bmp": "bmp",
                    ".avif": "avif", ".jxl": "jxl"}
# imagesize >= 2 rotates by EXIF unless told not to; sd-scripts pins imagesize 1.4.1, which reports the stored size.
_IMAGESIZE_OPTIONS = {"exif_rotation": False} if "exif_rotation" in inspect.signature(imagesize.get).parameters else {}
# imagesize 2 also reads an open file (so the file checked is the file measured); 1.x only takes a path.
_IMAGESIZE_READS_FILES = bool(_IMAGESIZE_OPTIONS)
# What sd-scripts does with an entry glob_images picks up that lorasetup does not read: make_buckets ->
# get_image_size -> imagesize.get opens it (checked against the real sd-scripts with each kind of entry).
_SD_SCRIPTS_ON = {"a named pipe (FIFO)": "sd-scripts waits on it forever (imagesize opens it to read the size)",
                  "a folder": "sd-scripts crashes opening it (IsADirectoryError)",
                  "a socket": "sd-scripts crashes opening it (OSError: No such device or address)",
                  "a character device": "sd-scripts reads no size from it and crashes (ZeroDivisionError in "
                                        "make_buckets)",
                  "loop": "sd-scripts crashes opening it (OSError: Too many levels of symbolic links)",
                  "missing": "sd-scripts lists it and crashes opening it (FileNotFoundError)",
                  "vanished": "something is changing the folder: a run started now crashes on it (FileNotFoundError)",
                  "permission": "sd-scripts crashes opening it (PermissionError)"}


@dataclass(frozen=True)
class ImageProbe:
    """What one image file's first and last bytes say."""

    size: tuple[int, int] | None
    fmt: str | None
    problem: str | None = None  # sd-scripts will crash on it
    warning: str | None = None


def probe_image(path: str) -> ImageProbe:
    """Header size (imagesize, as sd-scripts' get_image_size), content signature, and cheap truncation tests.
    Only a regular file is opened (lorasetup.engine.files): a pipe named like an image never blocks the check."""
    try:
        with files.open_regular(path) as fh:
            head, tail, length, size = _read_image(path, fh)
    except files.FileProblem as found:
        exc = _since_listed(found)
        if exc.file_kind == "a folder":
            return ImageProbe(None, None, "is a folder named like an image")
        then = _SD_SCRIPTS_ON.get(exc.file_kind or exc.kind, "sd-scripts crashes on it")
        return ImageProbe(None, None, f"{exc.problem}; {then}")
    if length == 0:
        return ImageProbe(None, None, "empty file (0 bytes)")
    fmt = next((name for name, test in SIGNATURES if test(head)), None)
    if fmt is None:
        return ImageProbe(None, None, f"not an image Pillow can open (starts with {head[:8]!r})")
    width, height = size
    if fmt in ("heic",):
        return ImageProbe(None, fmt, "HEIC content: Pillow cannot open it without a plugin; convert it to JPEG/PNG")
    if width <= 0 or height <= 0:
        if fmt in ("avif", "jxl"):  # imagesize cannot read these; sd-scripts falls back to Pillow
            return ImageProbe(None, fmt)
        return ImageProbe(None, fmt, f"{fmt.upper()} header unreadable (corrupt or truncated)")
    return _whole_file(width, height, fmt, head, tail, length)


def _whole_file(width: int, height: int, fmt: str, head: bytes, tail: bytes, length: int) -> ImageProbe:
    """A readable header: is the rest of the file there, and will Pillow agree to open something this large?"""
    if fmt == "png" and b"IEND" not in tail:
        return ImageProbe((width, height), fmt, "truncated PNG (no IEND chunk at the end)")
    if fmt == "webp" and int.from_bytes(head[4:8], "little") + 8 > length:
        return ImageProbe((width, height), fmt, "truncated WebP (shorter than its RIFF header says)")
    if width * height > 2 * PIL_MAX_PIXELS:
        return ImageProbe((width, height), fmt, f"{width}x{height} is over Pillow's decompression-bomb limit "
                          f"({2 * PIL_MAX_PIXELS} pixels): Image.open raises DecompressionBombError")
    warning = None
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        warning = "JPEG without an end marker: truncated, or trailing data after the image"
    elif width * height > PIL_MAX_PIXELS:
        warning = f"{width}x{height}: Pillow warns (DecompressionBombWarning) and it needs a lot of RAM"
    return ImageProbe((width, height), fmt, None, warning)


def _since_listed(exc: files.FileProblem) -> files.FileProblem:
    """A file of a folder listing that is not there now (and is no dead link) vanished since the listing."""
    if exc.kind != "missing" or os.path.lexists(exc.path):
        return exc
    return files.FileProblem(exc.path, "vanished since lorasetup listed its folder (moved or deleted meanwhile?)",
                             "run lorasetup again once nothing is changing the dataset", kind="vanished")


def _read_image(path: str, fh: BinaryIO) -> tuple[bytes, bytes, int, tuple[int, int]]:
    """(first 32 bytes, last 1024 bytes, length, imagesize's (width, height)) of an open image file."""
    length = os.fstat(fh.fileno()).st_size
    head = fh.read(32)
    fh.seek(max(0, length - 1024))
    tail = fh.read()
    fh.seek(0)
    try:
        size = imagesize.get(fh if _IMAGESIZE_READS_FILES else path, **_IMAGESIZE_OPTIONS)
    except Exception:  # noqa: BLE001 - imagesize 1.x raises ValueError on a bad header
        size = (-1, -1)
    return head, tail, length, size


# ----------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class CaptionRead:
    """The caption sd-scripts will use for one image, or why it will crash or fall back."""

    path: str | None           # caption file found, if any
    text: str | None           # first line (or all lines with enable_wildcard), stripped; None = no file
    problem: str | None = None  # sd-scripts stops on it (empty file, not UTF-8)
    bom: bool = False
    note: str | None = None  # worth a warning: a caption-named entry sd-scripts skips, one too large to read


def caption_candidates(image_path: str, extension: str) -> list[str]:
    """train_util read_caption: `<path without ext><ext>`, then the same without the last four `_` fields
    (face-crop file names); the split is over the whole path string, as there."""
    base = os.path.splitext(image_path)[0]
    tokens = base.split("_")
    face = "_".join(tokens[:-4]) if len(tokens) >= 5 else base
    return [base + extension, face + extension]


def read_caption(image_path: str, extension: str, wildcard: bool, scan: DirScan | None) -> CaptionRead:
    """The caption read_caption finds for one image. With the folder's listing (`scan`) the usual candidate,
    next to the image, is looked up without a file-system call."""
    first, face = caption_candidates(image_path, extension)
    same_folder = scan is not None and os.sep not in extension and not (os.altsep and os.altsep in extension)
    for candidate in (first, face) if face != first else (first,):
        if same_folder and scan is not None and candidate is first:
            exists = candidate[candidate.rfind(os.sep) + 1:] in scan.files
        else:
            exists = os.path.isfile(candidate)
        if exists:
            return _caption_file(candidate, wildcard)
    if os.path.lexists(first) and not os.path.isfile(first):  # a pipe, folder, device or dead link by its name
        return CaptionRead(None, None, note=f"{os.path.basename(first)} {files.describe(first)}, not a file: "
                           "sd-scripts skips it (os.path.isfile is false) and trains this image without that caption")
    return CaptionRead(None, None)


def _caption_file(path: str, wildcard: bool) -> CaptionRead:
    try:
        text = files.read_text(path)
    except files.FileProblem as found:
        exc = _since_listed(found)
        if exc.kind == "too-large":
            return CaptionRead(path, None, note=f"{os.path.basename(path)} {exc.problem}; sd-scripts reads all of "
                               "it into memory and trains on its first line")
        if exc.kind == "encoding":
            return CaptionRead(path, None, f"{exc.problem}: sd-scripts stops with 'illegal char in file (not UTF-8)'")
        return CaptionRead(path, None, f"{exc.problem}: sd-scripts crashes reading it")
    if not text:
        return CaptionRead(path, None, "empty caption file: sd-scripts stops with 'caption file is empty'")
    # text-mode readlines(): universal newlines, split on "\n" only
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    if wildcard:
        caption = "\n".join(line.strip() for line in lines if line.strip() != "")
    else:
        caption = lines[0].strip()
    return CaptionRead(path, caption, None, caption.startswith("\ufeff"))


def token_keeper(get: Callable[[str], Any]) -> Callable[[str], tuple[str, ...]]:
    """caption -> the tokens that keep their place when shuffling (BaseDataset.process_caption); `get` reads
    a subset's resolved setting."""
    prefix, suffix = get("caption_prefix"), get("caption_suffix")
    separator = get("caption_separator") or ","
    keep_sep = get("keep_tokens_separator")
    keep = get("keep_tokens") or 0

    def kept(caption: str) -> tuple[str, ...]:
        if prefix:
            caption = prefix + " " + caption
        if suffix:
            caption = caption + " " + suffix
        caption = caption.split("\n")[0]
        if keep_sep and keep_sep in caption:
            fixed = caption.split(keep_sep, 1)[0]
            return tuple(t.strip() for t in fixed.split(separator) if t.strip())
        tokens = [t.strip() for t in caption.strip().split(separator)]
        return tuple(tokens[:keep]) if keep > 0 else ()
    return kept


def shuffles(get: Callable[[str], Any]) -> bool:
    """keep_tokens only matters when captions are reordered or cut (BaseDataset.process_caption)."""
    return bool(get("shuffle_caption")) or (get("token_warmup_step") or 0) > 0 \
        or (get("caption_tag_dropout_rate") or 0) > 0
