"""A folder of training images read as sd-scripts' dataset subsets, and the dataset TOML that says so.

Two layouts people use: kohya's `<repeats>_<name>` folders (`img/10_spyke`, `reg/1_anime_character`), named the
way config_util.generate_dreambooth_subsets_config_by_subdirs reads them (the name split on `_`, the first token
through int(), the rest joined back as the class tokens), and plain folders of images with captions, whose
repeats come from the person. A folder (or a folder above it, below the root) named like `reg` holds
regularization images. Images and captions are seen as train_util.glob_images and read_caption see them
(lorasetup.sd.dataset.scan). Used by `lorasetup init`; nothing here writes a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine import tomltext
from lorasetup.sd.dataset.scan import NOT_CAPTIONS, DirScan, probe_image, read_caption, scan_dir
from lorasetup.sd.dataset.schema import PATH_KEYS

MAX_DEPTH = 2  # DIR, DIR/img, DIR/img/10_name: sd-scripts itself reads one level below train_data_dir
# Folders that hold training outputs, samples, environments or checkouts, never training images.
SKIP_DIRS = frozenset({"output", "outputs", "model", "models", "log", "logs", "sample", "samples", "venv", ".venv",
                       "__pycache__", "node_modules", "sd-scripts", "kohya_ss"})
# A folder name that says "regularization images" (also the dataset gate's test of is_reg against the name).
REG_NAME = re.compile(r"(^|[^a-z])(reg|regs|regularization|regularisation|class)([^a-z]|$)", re.IGNORECASE)
SIDECARS = (".xmp", ".aae")  # photo-editor sidecar files: never captions
# Training resolution per model family (sd-scripts' docs: SD1.x/2.x at 512, 768-v SD2 at 768, SDXL, FLUX.1 and
# SD3 at 1024).
FAMILY_RESOLUTION = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024, "sdxl-refiner": 1024, "flux": 1024,
                     "sd3": 1024}
DEFAULT_RESOLUTION = 512
BUCKET_STEP = 64  # sd-scripts' default bucket_reso_steps; every entry script accepts multiples of 64
SHOWN = 5
MANY_REPEATS = 100  # more repeats than anyone means: the number in the folder name is likely something else


@dataclass(frozen=True)
class Finding:
    """Something the person should know. An `error` means no dataset config is written until it is fixed."""

    level: str  # error | warn | info
    where: str
    text: str
    fix: str | None = None


@dataclass
class Folder:
    """One folder of images that becomes one subset."""

    path: Path
    rel: str
    scan: DirScan
    repeats: int
    repeats_from: str
    is_reg: bool
    class_tokens: str | None  # from a `<repeats>_<name>` folder name ("" for `10_`)
    caption_ext: str | None = None
    captioned: int = 0
    trigger: str | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return [os.path.join(str(self.path), name) for name in self.scan.images]


@dataclass
class Layout:
    root: Path
    folders: list[Folder] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, where: str, text: str, fix: str | None = None) -> None:
        """Record a finding; a file name that is not UTF-8 is shown with backslash escapes, never crashes."""
        def shown(s: str) -> str:
            return s.encode("utf-8", "backslashreplace").decode("utf-8")
        self.findings.append(Finding(level, shown(where), shown(text), shown(fix) if fix else None))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def train(self) -> list[Folder]:
        return [f for f in self.folders if not f.is_reg]


@dataclass(frozen=True)
class Options:
    """The person's choices (flags): repeats for plain folders, and a caption extension when files disagree."""

    repeats: int = 10
    reg_repeats: int = 1
    caption_extension: str | None = None
    skip: tuple[Path, ...] = ()


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """config_util.extract_dreambooth_params: (repeats, class tokens), or None when sd-scripts ignores the
    folder ('ignore directory without repeats')."""
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return repeats, "_".join(tokens[1:])


def read_layout(root: Path, options: Options) -> Layout:
    """Every image folder under `root` (two levels down at most) as a subset, with what is wrong with it."""
    layout = Layout(root)
    if not root.is_dir():
        layout.add("error", str(root), "is not a folder" if root.exists() else "does not exist",
                   "pass the folder that holds your images (or their img/ and reg/ folders)")
        return layout
    for path in _walk(root, options.skip):
        folder = _folder(layout, path, options)
        if folder is not None:
            _read_captions(layout, folder, options.caption_extension)
            folder.sizes = [probe.size for probe in map(probe_image, folder.images) if probe.size]
            layout.folders.append(folder)
    layout.folders.sort(key=lambda f: (f.is_reg, f.rel))
    if not layout.folders and not layout.errors:
        layout.add("error", str(root), "no images that sd-scripts reads (.png .jpg .jpeg .webp .bmp) in this folder "
                   "or the two levels below it", "put the images in this folder, or in img/<repeats>_<name>/")
    elif layout.folders and not layout.train and not layout.errors:
        layout.add("error", str(root), "only regularization images: no training images (sd-scripts logs 'No data "
                   "found' and exits without training)", "add a folder of training images next to the reg folder")
    return layout


def _walk(root: Path, skip: tuple[Path, ...]) -> list[Path]:
    """root and the folders below it, depth first and sorted, without outputs, environments and hidden folders."""
    found: list[Path] = []

    def visit(path: Path, depth: int) -> None:
        found.append(path)
        if depth == MAX_DEPTH:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name.lower() in SKIP_DIRS or child in skip:
                continue
            if (child / "library" / "train_util.py").is_file() or (child / "pyvenv.cfg").is_file():
                continue  # an sd-scripts checkout or a virtual environment
            visit(child, depth + 1)
    visit(root, 0)
    return found


def _folder(layout: Layout, path: Path, options: Options) -> Folder | None:
    """The subset a folder makes, or None (no images, or a name sd-scripts would misread: reported)."""
    scan = scan_dir(path)
    is_root = path == layout.root
    rel = "." if is_root else path.relative_to(layout.root).as_posix()
    # the folder init was pointed at counts as a <repeats>_<name> folder only when it plainly is one
    parsed = parse_folder_name(path.name) if not is_root or re.match(r"\d+_.", path.name) else None
    _report_files(layout, rel, scan)
    if not scan.images:
        if parsed is not None:
            layout.add("warn", rel, "is empty: no images sd-scripts reads, so it is left out",
                       "put the images in it, or remove it")
        return None
    try:
        tomltext.path_string(str(path))
    except tomltext.NotRepresentable:
        layout.add("error", rel, "the folder's name is not valid UTF-8, so no TOML file can name it",
                   "rename it with plain characters")
        return None
    parents = path.relative_to(layout.root).parts
    if parsed is None:
        if re.match(r"\s*\d", path.name) and not is_root:
            _misread(layout, rel, path.name)
            return None
        is_reg = any(REG_NAME.search(part) for part in parents)
        repeats, source = (options.reg_repeats, "--reg-repeats") if is_reg else (options.repeats, "--repeats")
        return Folder(path, rel, scan, repeats, source, is_reg, None)
    repeats, tokens = parsed
    if repeats < 1:
        layout.add("warn", rel, f"{repeats} repeats: sd-scripts skips this folder, so it is left out",
                   f"rename it to 1_{tokens or 'name'} to train on it")
        return None
    is_reg = any(REG_NAME.search(part) for part in parents[:-1])
    if repeats > MANY_REPEATS:
        layout.add("warn", rel, f"the folder name gives {repeats} repeats", "if that number is not a repeat count "
                   "(a year, an id), rename the folder so it does not start with <number>_")
    return Folder(path, rel, scan, repeats, "folder name", is_reg, tokens)


def _misread(layout: Layout, rel: str, name: str) -> None:
    digits = re.match(r"\s*(\d+)", name)
    rest = name[digits.end():].lstrip(" -._") if digits else name
    fixed = f"{digits.group(1) if digits else '1'}_{rest or 'name'}"
    layout.add("error", rel, f"folder name {name!r} starts with a number but not `<repeats>_`: sd-scripts' folder mode "
               "ignores it ('ignore directory without repeats'), and whether it means repeats is unclear",
               f"if the number is the repeat count: mv {_shell(rel)} {_shell(str(Path(rel).with_name(fixed)))}; "
               "if not, rename the folder so it does not start with a number")


def _shell(text: str) -> str:
    return text if re.fullmatch(r"[\w./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _report_files(layout: Layout, rel: str, scan: DirScan) -> None:
    """Image files sd-scripts skips, and files that are neither images nor captions."""
    if scan.error:
        layout.add("warn", rel, f"cannot be read: {scan.error}")
    if scan.lookalikes:
        layout.add("warn", rel, f"sd-scripts skips {_names(scan.lookalikes)}: only .png .jpg .jpeg .webp .bmp "
                   "(all lower or all upper case) are read",
                   "convert them to PNG or JPEG, or give them a lower-case extension")
    if scan.plugin_only:
        layout.add("warn", rel, f"{_names(scan.plugin_only)} are read only with a Pillow plugin "
                   "(pillow-avif-plugin / pillow-jxl-plugin) in the training venv", "convert them to PNG")
    stems = {os.path.splitext(name)[0] for name in scan.images}
    odd = sorted(name for name in scan.files if os.path.splitext(name)[0] not in stems
                 and name not in scan.lookalikes and name not in scan.plugin_only)
    if odd and scan.images:
        layout.add("info", rel, f"{_names(odd)} are neither images nor captions of an image; sd-scripts ignores them")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return f"{len(names)} files ({shown}{', ...' if len(names) > SHOWN else ''})"


def caption_files(scan: DirScan) -> dict[str, list[str]]:
    """Caption extension -> the images that have a `<stem><ext>` file beside them."""
    found: dict[str, list[str]] = {}
    for name in scan.images:
        for ext in sorted(scan.extensions.get(os.path.splitext(name)[0], ())):
            if ext.lower() not in NOT_CAPTIONS and ext.lower() not in SIDECARS:
                found.setdefault(ext, []).append(name)
    return found


def _read_captions(layout: Layout, folder: Folder, forced: str | None) -> None:
    """The folder's caption extension (reported, never guessed, when files disagree), and the trigger word."""
    by_ext = caption_files(folder.scan)
    if forced is not None:
        folder.caption_ext = forced
    elif len(by_ext) == 1:
        folder.caption_ext = next(iter(by_ext))
    elif len(by_ext) > 1:
        _mixed_extensions(layout, folder, by_ext)
        return
    have = set(by_ext.get(folder.caption_ext, [])) if folder.caption_ext else set()
    folder.captioned = len(have)
    missing = [name for name in folder.scan.images if name not in have]
    if missing:
        _missing_captions(layout, folder, missing)
    if folder.captioned and not folder.is_reg:
        folder.trigger = _trigger(folder)
    if folder.class_tokens == "" and not missing:
        renamed = str(Path(folder.rel).with_name(f"{folder.repeats}_name"))
        layout.add("warn", folder.rel, f"folder name {folder.path.name!r} has no name after the repeats: sd-scripts' "
                   "folder mode gives its images an empty class token (harmless here, every image has a caption)",
                   f"rename it: mv {_shell(folder.rel)} {_shell(renamed)}")


def _mixed_extensions(layout: Layout, folder: Folder, by_ext: dict[str, list[str]]) -> None:
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_ext.items(), key=lambda kv: -len(kv[1])))
    both = set.intersection(*(set(v) for v in by_ext.values()))
    main, other = sorted(by_ext, key=lambda e: -len(by_ext[e]))[:2]
    fix = (f"pass --caption-extension {main} (or {other}) to choose" if both else
           f"rename the {other} files to {main}: cd {_shell(str(folder.path))} && for f in *{other}; do "
           f"mv -- \"$f\" \"${{f%{other}}}{main}\"; done; or pass --caption-extension to choose")
    layout.add("error", folder.rel, f"caption files with different extensions ({counts}"
               + (f"; {len(both)} images have both" if both else "")
               + "): sd-scripts reads one caption_extension per subset and trains the others without captions", fix)


def _missing_captions(layout: Layout, folder: Folder, missing: list[str]) -> None:
    ext = folder.caption_ext or ".txt"
    names = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    of = f"{len(missing)} of {len(folder.scan.images)} images"
    if folder.class_tokens:
        if folder.captioned and not folder.is_reg:
            layout.add("warn", folder.rel, f"{of} have no {ext} caption and train on the class tokens "
                       f"{folder.class_tokens!r}: {names}", f"write a {ext} caption for each if that is not meant")
    elif folder.is_reg:
        layout.add("warn", folder.rel, f"{of} (regularization) have neither caption nor class token: they train on an "
                   "empty caption", "name the folder <repeats>_<class>, e.g. 1_woman, so they train on the class")
    else:
        layout.add("error", folder.rel, f"{of} have neither a caption nor a class token, so they train on an empty "
                   f"caption and the LoRA learns no trigger word: {names}",
                   f"write a caption file beside each (<image name>{ext}), or put them in a folder named "
                   "<repeats>_<trigger>, e.g. 10_mychar, whose name becomes their class tokens")


def _trigger(folder: Folder) -> str | None:
    """The first caption tag (up to the first comma) when every caption of the folder starts with the same one,
    followed by more (a folder of identical one-tag captions has no trigger word to keep in front)."""
    heads, more = set(), False
    for path in folder.images:
        caption = read_caption(path, folder.caption_ext or "", False, folder.scan)
        if caption.text:
            head, comma, rest = caption.text.partition(",")
            heads.add(head.strip())
            more = more or bool(comma and rest.strip())
    return heads.pop() if len(heads) == 1 and "" not in heads and more else None


def choose_resolution(sizes: list[tuple[int, int]], family: str | None) -> tuple[int, str]:
    """The family's resolution, lowered (in steps of 64) until at least half the training images reach it:
    sd-scripts upscales smaller images to the bucket size, which trains on blur."""
    base = FAMILY_RESOLUTION.get(family or "", DEFAULT_RESOLUTION)
    why = "for this model family" if family in FAMILY_RESOLUTION else "default: the model family is not known"
    if not sizes:
        return base, why
    sides = sorted((int((w * h) ** 0.5) for w, h in sizes), reverse=True)
    median = sides[(len(sides) - 1) // 2]
    if median >= base:
        return base, f"{why}; {sum(s >= base for s in sides)} of {len(sides)} training images reach it"
    lowered = max(BUCKET_STEP, median - median % BUCKET_STEP)
    return lowered, (f"lowered from {base}: only {sum(s >= base for s in sides)} of {len(sides)} training images "
                     f"are that big, and sd-scripts would upscale the rest")


def bucket_range(resolution: int) -> tuple[int, int]:
    """Half to twice the resolution (sd-scripts' own defaults, 256 and 1024, at 512)."""
    low = max(BUCKET_STEP, resolution // 2 - (resolution // 2) % BUCKET_STEP)
    return low, resolution * 2


def dataset_data(layout: Layout, resolution: int, batch_size: int, flip_aug: bool) -> dict[str, Any]:
    """The dataset config as data: shared settings in [general] (as the seed wrote it), per-folder ones in the
    subsets. keep_tokens = 1 when every captioned training folder starts its captions with one trigger word."""
    captioned = [f for f in layout.folders if f.captioned]
    exts = {f.caption_ext for f in captioned}
    general: dict[str, Any] = {"enable_bucket": True}
    if len(exts) == 1:
        general["caption_extension"] = exts.pop()
    triggers = [f.trigger for f in captioned if not f.is_reg]
    shared_keep = bool(triggers) and all(triggers)
    if shared_keep:
        general["keep_tokens"] = 1
    if flip_aug:
        general["flip_aug"] = True
    low, high = bucket_range(resolution)
    dataset: dict[str, Any] = {"resolution": resolution, "batch_size": batch_size, "min_bucket_reso": low,
                               "max_bucket_reso": high, "subsets": []}
    for folder in layout.folders:
        subset: dict[str, Any] = {"image_dir": str(folder.path)}
        if folder.is_reg:
            subset["is_reg"] = True
        subset["num_repeats"] = folder.repeats
        if folder.class_tokens is not None and folder.captioned < len(folder.scan.images):
            subset["class_tokens"] = folder.class_tokens
        if folder.captioned and "caption_extension" not in general:
            subset["caption_extension"] = folder.caption_ext
        if folder.trigger and not shared_keep:
            subset["keep_tokens"] = 1
        dataset["subsets"].append(subset)
    return {"general": general, "datasets": [dataset]}


def render_dataset(data: dict[str, Any], notes: dict[str, str], header: list[str]) -> str:
    """TOML text of `dataset_data`'s result, laid out as people write it; `notes` are end-of-line comments by
    place (`general.keep_tokens`, `datasets[0].subsets[1]` for a subset's header)."""
    lines = [tomltext.comment(line) for line in header] + ["", "[general]"]
    lines += _pairs(data["general"], notes, "general", "")
    for i, dataset in enumerate(data["datasets"]):
        lines += ["", "[[datasets]]"]
        lines += _pairs({k: v for k, v in dataset.items() if k != "subsets"}, notes, f"datasets[{i}]", "")
        for j, subset in enumerate(dataset["subsets"]):
            place = f"datasets[{i}].subsets[{j}]"
            lines += ["", "  [[datasets.subsets]]" + (f"  {tomltext.comment(notes[place])}" if place in notes else "")]
            lines += _pairs(subset, notes, place, "  ")
    return "\n".join(lines) + "\n"


def _pairs(table: dict[str, Any], notes: dict[str, str], place: str, indent: str) -> list[str]:
    out = []
    for key, item in table.items():
        text = tomltext.path_string(item) if key in PATH_KEYS else tomltext.value(item)
        note = notes.get(f"{place}.{key}")
        out.append(f"{indent}{key} = {text}" + (f"  {tomltext.comment(note)}" if note else ""))
    return out
