"""Changing a training argument where it lives, for the fixes of every gate.

A value may be set in the training config TOML (`--config_file`), in `lorasetup.toml`'s `train_args` (or
`[tool.lorasetup]` in a pyproject.toml), or on the command line after `--`. The first two are edited in place
through the one guarded editor (lorasetup.engine.tomledit); the command line cannot be edited, so the plan carries
the corrected arguments for the person to paste. Since the command line beats the TOML in sd-scripts, a change is
made in every place that sets the option, so no shadowed value comes back.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed, Fix
from lorasetup.engine.target import Target, tomllib
from lorasetup.engine.tomledit import Change, toml_value, try_edit_fix
from lorasetup.sd.run.command import real_command
from lorasetup.sd.trainargs import AFTER_DASHES, ArgsOrigin, CliFlag, TrainArgs, train_args
from lorasetup.sd.trainargs import arg_origins as target_origins


@dataclass(frozen=True)
class ArgChange:
    """Set option `name` to `value` (False turns a flag off), or, with `rename_from`, rename a misspelt TOML key
    or flag (`rename_from` as written) to `name`. An option set nowhere is added next to `near`'s key."""

    name: str
    value: Any = None
    rename_from: str | None = None
    near: str | None = None


@dataclass
class ArgPlan:
    """The file edits and the corrected command line that make a list of ArgChanges."""

    edits: dict[Path, list[Change]] = field(default_factory=dict)
    seen: dict[Path, bytes] = field(default_factory=dict)
    tokens: dict[ArgsOrigin, list[str]] = field(default_factory=dict)  # origin -> its corrected tokens
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passthrough(self) -> list[str] | None:
        """The corrected arguments after `--`, when they change."""
        return next(([t for t in tokens if t] for o, tokens in self.tokens.items() if o.file is None), None)

    def fix(self, description: str, safe: bool = False) -> tuple[Fix | None, str | None]:
        """The Fix for the file edits (None when there are none or they cannot be made safely, with why)."""
        if not self.edits:
            return None, None
        return try_edit_fix(description, list(self.edits.items()), safe, self.seen)

    def manual(self, command: list[str] | None = None) -> str | None:
        """What the person must do by hand: the corrected arguments after `--`, ready to paste."""
        new = self.passthrough
        if new is None:
            return None
        text = f"arguments after -- cannot be edited; run again with: -- {shlex.join(new)}"
        return text + (f"; the training command: {shlex.join(command)}" if command else "")


def command(target: Target, plan: ArgPlan) -> list[str] | None:
    """The full training command with the corrected arguments (None without a checkout to launch)."""
    if plan.passthrough is None:
        return None
    tokens: list[str] = []
    corrected = {o: [t for t in tokens_ if t] for o, tokens_ in plan.tokens.items()}
    origins = list(target_origins(target))
    for origin in origins:
        tokens += corrected.get(origin, list(origin.tokens))
    try:
        return real_command(replace(target, train_args=tokens))
    except CheckFailed:
        return None


def plan(args: TrainArgs, changes: list[ArgChange]) -> ArgPlan:
    out = ArgPlan()
    for change in changes:
        if change.rename_from is not None:
            _rename(args, change, out)
        else:
            _set(args, change, out)
    for origin, tokens in out.tokens.items():
        if origin.file is not None:
            _file_tokens_edit(origin, tokens, out)
    return out


def render(value: Any) -> str:
    """A value as it reads in a TOML file (or as typed, when TOML has no form for it)."""
    if value is None:
        return "(unset)"
    try:
        return toml_value(value)
    except TypeError:
        return str(value)


# --- TOML --------------------------------------------------------------------------------------------------

def _toml_change(args: TrainArgs, change: Change, out: ArgPlan) -> None:
    path = args.config_file
    assert path is not None
    out.edits.setdefault(path, []).append(change)


def _set(args: TrainArgs, change: ArgChange, out: ArgPlan) -> None:
    old = args.get(change.name)
    places = []
    for item in args.toml:
        if item.key == change.name:
            _toml_change(args, Change(item.table, item.key, change.value), out)
            places.append(item.place)
    for flag in args.cli:
        if args._dest(flag) == change.name:
            _cli_set(args, flag, change, out)
            places.append(flag.place)
    if not places and change.value != old:
        places.append(_add(args, change, out))
    out.lines.append(f"{change.name}: {render(old)} -> {render(change.value)} ({', '.join(places)})")


def _add(args: TrainArgs, change: ArgChange, out: ArgPlan) -> str:
    """Add an option set nowhere: where `near` is set (its TOML table, or its command-line tokens), else to the
    training TOML's last table, else to the tokens the other options came from."""
    near_flag = args.flag_of(change.near) if change.near else None
    near_item = args.item_of(change.near) if change.near and near_flag is None else None
    if near_flag is None and args.config_file is not None and args.toml:
        table = (near_item or args.toml[-1]).table
        _toml_change(args, Change(table, change.name, change.value), out)
        return f"{args.config_file.name}{' [' + '.'.join(table) + ']' if table else ''}"
    origin = near_flag.origin if near_flag is not None and near_flag.origin else _token_home(args)
    tokens = _tokens(out, origin)
    if change.value is True:
        tokens.append(f"--{change.name}")
    elif change.value is not False and change.value is not None:
        tokens.append(f"--{change.name}={change.value}")
    return origin.label


def _token_home(args: TrainArgs) -> ArgsOrigin:
    editable = [o for o in args.origins if o.file is not None]
    if editable:
        return editable[0]
    return next((o for o in args.origins if o.file is None), None) or ArgsOrigin(AFTER_DASHES, ())


def _rename(args: TrainArgs, change: ArgChange, out: ArgPlan) -> None:
    wrong = change.rename_from
    for item in args.toml:
        if item.key == wrong:
            _toml_change(args, Change(item.table, item.key, rename_to=change.name), out)
            out.lines.append(f"{item.place}: rename to `{change.name}`")
    for flag in args.cli:
        if flag.name == wrong:
            origin = _origin(args, flag)
            tokens = _tokens(out, origin)
            tokens[flag.index - _offset(args, origin)] = f"--{change.name}" + flag.token[len(flag.name):]
            out.lines.append(f"{flag.place}: rename to `--{change.name}`")


# --- command-line tokens -----------------------------------------------------------------------------------

def _origin(args: TrainArgs, flag: CliFlag) -> ArgsOrigin:
    if flag.origin is not None:
        return flag.origin
    raise ValueError(f"{flag.token}: no origin (load_train_args always sets one)")


def _offset(args: TrainArgs, origin: ArgsOrigin) -> int:
    n = 0
    for o in args.origins:
        if o is origin:
            return n
        n += len(o.tokens)
    return n


def _tokens(out: ArgPlan, origin: ArgsOrigin) -> list[str]:
    if origin not in out.tokens:
        out.tokens[origin] = list(origin.tokens)
    return out.tokens[origin]


def _cli_set(args: TrainArgs, flag: CliFlag, change: ArgChange, out: ArgPlan) -> None:
    """Rewrite one flag's tokens: a flag turned off is removed, a value is replaced in the form it was typed."""
    origin = _origin(args, flag)
    tokens = _tokens(out, origin)
    i = flag.index - _offset(args, origin)
    count = len(flag.tokens)
    opt = args.spec.get(change.name) if args.spec else None
    texts = [str(v) for v in change.value] if isinstance(change.value, list) else [str(change.value)]
    if change.value is False and (opt is None or not opt.takes_value):
        new: list[str] = []
    elif change.value is True:
        new = [flag.name]
    elif flag.inline or not flag.values:
        new = [f"{flag.name}={' '.join(texts)}"]
    else:
        new = [flag.name, *texts]
    tokens[i:i + count] = new + [""] * (count - len(new))  # keep the indexes of later flags; blanks go below


def _file_tokens_edit(origin: ArgsOrigin, tokens: list[str], out: ArgPlan) -> None:
    """Edit `train_args` in lorasetup.toml / pyproject.toml: a targeted edit inside the string when each change
    is one plain token, else the whole value rewritten (still verified by parsing the file again)."""
    assert origin.file is not None and origin.seen is not None
    final = [t for t in tokens if t]
    out.tokens[origin] = final
    old_text = _raw_value(origin)
    if old_text is None:  # a TOML array
        out.edits.setdefault(origin.file, []).append(Change(origin.table, "train_args", final))
        out.seen[origin.file] = origin.seen
        return
    new_text, within = _string_edit(old_text, list(origin.tokens), tokens)
    if new_text is None or shlex.split(new_text) != final:
        new_text, within = shlex.join(final), ()
    out.edits.setdefault(origin.file, []).append(Change(origin.table, "train_args", new_text, within=within))
    out.seen[origin.file] = origin.seen


def _raw_value(origin: ArgsOrigin) -> str | None:
    """`train_args` as parsed: a string, or None for a TOML array."""
    assert origin.seen is not None
    data: Any = tomllib.loads(origin.seen.decode("utf-8"))
    for part in (*origin.table, "train_args"):
        data = data[part]
    return data if isinstance(data, str) else None


def _string_edit(text: str, old: list[str], new: list[str]) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """Apply token changes (same positions; "" = removed) to the string they were split from; each changed
    token must occur exactly once as a whole word. Returns the new string and the substitutions made."""
    subs: list[tuple[str, str]] = []
    for before, after in zip(old, new):
        if before == after:
            continue
        pattern = re.compile(r"(?:(?<=\s)|^)" + re.escape(before) + r"(?=\s|$)")
        found = list(pattern.finditer(text))
        if len(found) != 1:
            return None, ()
        start, end = found[0].span()
        if not after:  # remove the token and the blanks before it; at the start of a line, those after it
            lead = start
            while lead > 0 and text[lead - 1] in " \t":
                lead -= 1
            if lead == 0 or text[lead - 1] == "\n":
                while end < len(text) and text[end] in " \t":
                    end += 1
            else:
                start = lead
        segment = text[start:end]
        if text.count(segment) != 1:
            return None, ()
        subs.append((segment, after))
        text = text[:start] + after + text[end:]
    extra = new[len(old):]
    if extra:
        stripped = text.rstrip()
        anchor = stripped.split()[-1] if stripped.split() else ""
        if not anchor or text.count(anchor) != 1:
            return None, ()
        joined = " ".join(shlex.quote(t) for t in extra if t)
        subs.append((anchor, f"{anchor} {joined}"))
        text = text.replace(anchor, f"{anchor} {joined}")
    return text, tuple(subs)


def fix_and_hint(ctx: Context, changes: list[ArgChange], description: str, safe: bool = False) -> tuple[Fix | None,
                                                                                                       str]:
    """The fix that makes `changes` in the files that set each option, and the text to add to the hint for what
    is left to the person (arguments after --, an edit that cannot be made safely)."""
    if not changes:
        return None, ""
    made = plan(train_args(ctx), changes)
    fix, why = made.fix(description, safe=safe)
    extra = ""
    manual = made.manual(command(ctx.target, made))
    if manual:
        extra += f". {manual}"
    if why:
        extra += f". Not fixed automatically: {why}"
    return fix, extra
