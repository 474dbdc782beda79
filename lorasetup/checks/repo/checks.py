"""The repo gate: the checkout exists, its sd-scripts submodule is populated and at the pinned commit,
and the files training needs are there. Fix: `git submodule update --init --recursive`, never over local
changes."""

from __future__ import annotations

import difflib
from pathlib import Path

from lorasetup.checks import check
from lorasetup.engine.context import Context
from lorasetup.engine.result import Fix, FixError, Result
from lorasetup.engine.target import DISCOVERY_DIRS
from lorasetup.sd.git import git

SUBMODULE = "sd-scripts"  # the submodule path in kohya_ss's .gitmodules
NEEDED_FILES = ("library/train_util.py", "networks/lora.py")
RECLONE = "git clone --recursive https://github.com/bmaltais/kohya_ss.git"


def gitlink(root: Path) -> str | None:
    """The commit the parent repo pins for the submodule (`git ls-tree HEAD sd-scripts`)."""
    out = git(root, "ls-tree", "HEAD", SUBMODULE).stdout.split()
    return out[2] if len(out) >= 3 and out[0] == "160000" else None


def local_changes(path: Path) -> list[str]:
    """Modified or untracked files inside a checkout (`git status --porcelain`), or every entry of a
    folder that is not a checkout at all."""
    if not (path / ".git").exists():
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return [line[3:] for line in git(path, "status", "--porcelain").stdout.splitlines() if line.strip()]


def first_error(stderr: str) -> str:
    """git's first `fatal:`/`error:` line (the cause), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else
                "no output")


def submodule_fix(root: Path) -> Fix:
    """`git submodule update --init --recursive sd-scripts`, refused when it could lose local work."""
    command = ["submodule", "update", "--init", "--recursive", SUBMODULE]

    def apply() -> None:
        changes = local_changes(root / SUBMODULE)
        if changes:
            shown = ", ".join(changes[:10]) + (f" and {len(changes) - 10} more" if len(changes) > 10 else "")
            raise FixError(f"refusing to update {root / SUBMODULE}: it has local changes or files that git "
                           f"would overwrite ({shown}). Commit, move or delete them, then run "
                           f"`git -C {root} {' '.join(command)}` yourself.")
        proc = git(root, *command)
        if proc.returncode != 0:
            raise FixError(f"git submodule update failed (exit {proc.returncode}): {first_error(proc.stderr)}")
    return Fix(f"populate the {SUBMODULE} submodule at the commit kohya_ss pins",
               [f"git -C {root} {' '.join(command)}"], apply, safe=True)


@check("repo.root", "a kohya_ss or sd-scripts checkout is there")
def root(ctx: Context) -> Result:
    target = ctx.target
    if target.kohya_root is None:
        return Result.fail(
            "no kohya_ss or sd-scripts checkout found",
            [f"looked in the working directory and its parents, and in {', '.join(DISCOVERY_DIRS)}"],
            hint="point lorasetup at it: `lorasetup doctor --kohya-root /path/to/kohya_ss`, or set kohya_root "
                 "in lorasetup.toml")
    if not target.kohya_root.is_dir():
        return Result.fail(f"{target.kohya_root} does not exist or is not a folder",
                           [f"kohya_root came from: {target.sources.get('kohya_root', 'default')}"],
                           hint="fix --kohya-root (or kohya_root in lorasetup.toml) to point at your checkout")
    if target.layout is None:
        return Result.fail(f"{target.kohya_root} is neither a kohya_ss nor an sd-scripts checkout",
                           ["expected kohya_gui.py or an sd-scripts/ submodule (kohya_ss), or "
                            "library/train_util.py and train_network.py (sd-scripts)"],
                           hint="point --kohya-root at the folder you cloned kohya_ss or sd-scripts into")
    text = str(target.kohya_root)
    if " " in text or not text.isascii():
        return Result.warn(f"{target.layout} checkout at {text}, a path with spaces or non-ASCII characters",
                           ["kohya_ss's setup refuses paths with spaces, and some tools fail on non-ASCII paths"],
                           hint="move the checkout to a plain path such as ~/kohya_ss")
    return Result.ok(f"{target.layout} checkout at {text}")


@check("repo.git", "the checkout is a git clone (not a ZIP download)", requires=("repo.root",))
def is_git(ctx: Context) -> Result:
    root_dir = ctx.target.kohya_root
    assert root_dir is not None
    proc = git(root_dir, "rev-parse", "--show-toplevel")
    if proc.returncode == 0:
        head = git(root_dir, "rev-parse", "--short", "HEAD").stdout.strip() or "no commit yet"
        return Result.ok(f"git checkout at {head}")
    if ctx.target.layout == "kohya_ss":
        return Result.fail(
            f"{root_dir} has no .git: a ZIP download, so the {SUBMODULE} submodule cannot be fetched",
            ["GitHub's ZIP downloads leave submodules empty and cannot be updated with git"],
            hint=f"re-clone with submodules and move your files over: `{RECLONE}`")
    return Result.warn(f"{root_dir} has no .git (a ZIP download?): its version cannot be told or updated",
                       hint="prefer `git clone https://github.com/kohya-ss/sd-scripts.git` so updates and "
                            "version checks work")


@check("repo.submodule", "the sd-scripts submodule is populated at the pinned commit", requires=("repo.git",),
       fixes="`git submodule update --init --recursive sd-scripts` to the pinned commit (safe; refused over local "
             "changes in the submodule)")
def submodule(ctx: Context) -> Result:
    root_dir = ctx.target.kohya_root
    assert root_dir is not None
    if ctx.target.layout != "kohya_ss":
        return Result.ok("bare sd-scripts checkout: no submodule to check")
    sub = root_dir / SUBMODULE
    pinned = gitlink(root_dir)
    if pinned is None:
        return Result.fail(f"{root_dir} does not record {SUBMODULE} as a submodule (`git ls-tree HEAD "
                           f"{SUBMODULE}` shows no gitlink)",
                           hint=f"re-clone kohya_ss with submodules: `{RECLONE}`")
    cost = "every training script is missing, so the run cannot even start"
    if not sub.is_dir() or not any(sub.iterdir()):
        state = ("deinitialised" if (root_dir / ".git" / "modules" / SUBMODULE).is_dir()
                 else "never initialised")
        return Result.fail(f"the {SUBMODULE} submodule is empty ({state})",
                           [f"{sub} has no files; kohya_ss pins it at {pinned[:12]}", cost],
                           hint=f"`git -C {root_dir} submodule update --init --recursive`",
                           fix=submodule_fix(root_dir))
    if not (sub / ".git").exists():
        return Result.fail(f"{sub} holds files but is not a checkout of the submodule",
                           [f"found: {', '.join(local_changes(sub)[:10])}", cost],
                           hint=f"move {sub} aside, then `git -C {root_dir} submodule update --init --recursive`",
                           fix=submodule_fix(root_dir))
    actual = git(sub, "rev-parse", "HEAD").stdout.strip()
    changes = local_changes(sub)
    details = []
    if actual != pinned:
        details.append(f"checked out {actual[:12] or 'nothing'}, kohya_ss pins {pinned[:12]}: the GUI and the "
                       "scripts may disagree on options (`unrecognized arguments`)")
    if changes:
        details.append(f"local changes in {sub}: {', '.join(changes[:10])}"
                       + (f" and {len(changes) - 10} more" if len(changes) > 10 else ""))
    if details:
        hint = (f"to return to the pinned commit: `git -C {root_dir} submodule update --recursive` "
                "(commit or stash local changes first)") if actual != pinned else \
            "keep your edits in mind: a later `git submodule update` will refuse or discard them"
        return Result.warn(f"{SUBMODULE} is populated but " + ("not at the pinned commit" if actual != pinned
                                                              else "has local changes"), details, hint=hint)
    return Result.ok(f"{SUBMODULE} populated at the pinned commit {pinned[:12]}")


@check("repo.present", "the entry script and the library it needs are present", requires=("repo.submodule",))
def present(ctx: Context) -> Result:
    tree = ctx.target.sd_scripts
    assert tree is not None
    script = ctx.target.script
    missing = [rel for rel in (script, *NEEDED_FILES) if not (tree / rel).is_file()]
    if not missing:
        return Result.ok(f"{script}, {', '.join(NEEDED_FILES)} present in {tree}")
    details = [f"missing: {tree / rel}" for rel in missing]
    if script in missing:
        scripts = sorted(p.name for p in tree.glob("*train*.py"))
        close = difflib.get_close_matches(script, scripts, n=1)
        if close:
            details.append(f"did you mean --script {close[0]}?")
        if scripts:
            details.append(f"entry scripts here: {', '.join(scripts)}")
    return Result.fail(f"{len(missing)} file(s) training needs are missing from {tree}", details,
                       hint="the run dies at once with `can't open file`; fix --script, or re-check out sd-scripts "
                            "(`git checkout -- .` inside it)")
