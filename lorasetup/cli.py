"""The `lorasetup` command line: doctor, bootstrap, smoke, train, checkpoints, env, list-checks, init.

Exit codes: 0 no required check failed (warnings allowed), 1 a check failed or errored, 2 usage or
config error. `--json` writes only JSON to stdout; human text goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorasetup import __version__
from lorasetup.checks import all_checks
from lorasetup.engine.context import Context
from lorasetup.engine.fixer import Outcome, bootstrap, needs_you
from lorasetup.engine.report import LiveBlock, err, exit_code, render_result, summary_line, to_json, use_color
from lorasetup.engine.result import Check, FixError, Result, Status
from lorasetup.engine.runner import Deadline, Runner, select
from lorasetup.engine.target import FIELD_NAMES, SETTINGS, ConfigError, Target, UnknownKey, load_target
from lorasetup.engine.tomledit import Change, try_edit_fix
from lorasetup.initcmd import add_init_flags, init_command
from lorasetup.sd.run.longrun import DEFAULT_STALL_TIMEOUT_S, TrainOptions

TARGET_FLAGS = tuple(s for s in SETTINGS if s.cli)


class UsageError(Exception):
    """Bad command line: exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def add_target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target (also: lorasetup.toml, [tool.lorasetup], LORASETUP_<FIELD>)")
    for setting in TARGET_FLAGS:
        g.add_argument(setting.flag, dest=setting.name, help=setting.help)
    g.add_argument("--config", type=Path, help="a lorasetup.toml to use instead of searching for one")
    g.add_argument("-v", "--verbose", action="store_true", help="details, probe output, per-check timings")


def add_selection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", action="extend", default=[], metavar="ID",
                   help="only these checks or gates (their requirements run too)")
    p.add_argument("--skip", nargs="+", action="extend", default=[], metavar="ID",
                   help="skip these checks or gates (they neither run nor block others)")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="bound the whole run: a check still running then ends as an error and its processes "
                        "are stopped (each check also has its own limit)")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def deadline(args: argparse.Namespace) -> Deadline | None:
    return Deadline.start(args.timeout) if args.timeout else None


def seconds(text: str) -> float:
    """A duration flag: `90`, `90s`, `10m`, `1.5h`."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), 0)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 600, 90s, 10m, 1.5h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than 0")
    return value


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke run")
    p.add_argument("--force", action="store_true", help="start even when a gate fails")
    p.add_argument("--quiet", action="store_true", help="hide the run's own output (status and verdicts stay)")
    p.add_argument("--on-nan", choices=("stop", "warn"), default="stop",
                   help="at the first non-finite loss or checkpoint: stop the run (default) or only warn")
    p.add_argument("--stall-timeout", type=seconds, default=DEFAULT_STALL_TIMEOUT_S, metavar="DURATION",
                   help="stop when no step came for this long, or 10x the median step time if longer "
                        "(default 10m)")
    p.add_argument("--load-timeout", type=seconds, metavar="DURATION",
                   help="stop when the first step has not come this long after the start "
                        "(default: 5x the smoke run's load and first step, at least 30m)")
    p.add_argument("--report", type=Path, metavar="FILE", help="write the run's report as JSON (run.json)")


def build_parser() -> Parser:
    parser = Parser(prog="lorasetup", description="Will this LoRA training setup survive an hour-long run? "
                    "Arguments after `--` are passed to sd-scripts.")
    parser.add_argument("--version", action="version", version=f"lorasetup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    doctor = sub.add_parser("doctor", help="run the checks and report")
    add_target_flags(doctor)
    add_selection_flags(doctor)
    doctor.add_argument("--smoke", action="store_true", help="also run the 5-step smoke training run")
    doctor.add_argument("--json", action="store_true", help="only JSON on stdout")
    doctor.add_argument("--strict", action="store_true", help="warnings fail too")
    doctor.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing check")
    doctor.add_argument("--fresh", action="store_true",
                        help="ask the training interpreter anew, not the warm cache of its last answers")

    boot = sub.add_parser("bootstrap", help="show the repair plan; with --fix apply it and re-check")
    add_target_flags(boot)
    add_selection_flags(boot)
    boot.add_argument("--fix", action="store_true", help="apply the safe fixes")
    boot.add_argument("--yes", action="store_true", help="also apply fixes that need consent")
    boot.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    boot.add_argument("--pip-args", default="", metavar="ARGS",
                      help="extra pip arguments, e.g. '--no-index --find-links ./wheels'")
    boot.add_argument("--all-pins", action="store_true",
                      help="install every pin of the checkout's requirement files, not only those of the modules "
                           "this run imports (the GUI's, captioning's, ...)")
    boot.add_argument("--json", action="store_true", help="only JSON on stdout")

    smoke = sub.add_parser("smoke", help="a real short training run (default 5 steps) with finite loss")
    add_target_flags(smoke)
    smoke.add_argument("--steps", type=int, help="training steps (default 5)")
    smoke.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    smoke.add_argument("--json", action="store_true", help="only JSON on stdout")

    train = sub.add_parser("train", help="preflight, smoke run, then the real run, watched to its end")
    add_target_flags(train)
    add_train_flags(train)

    points = sub.add_parser("checkpoints", help="verify every LoRA of a run (output_dir, or DIR), in step order")
    add_target_flags(points)
    points.add_argument("dir", nargs="?", type=Path, metavar="DIR",
                        help="a folder of LoRA files (default: the run's output_dir)")
    points.add_argument("--json", action="store_true", help="only JSON on stdout")

    env = sub.add_parser("env", help="a paste-ready description of this machine and setup")
    add_target_flags(env)

    checks = sub.add_parser("list-checks", help="every check id, its markers and what it needs")
    checks.add_argument("--fixes", action="store_true", help="what each check repairs and how")

    init = sub.add_parser("init", help="write dataset.toml and lorasetup.toml for a folder of images, then check",
                          description="Target flags override what init finds; it reads a lorasetup.toml only when "
                          "--config names one. Arguments after `--` are added to the training arguments.")
    add_init_flags(init)
    add_target_flags(init)
    return parser


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """lorasetup's own arguments, and the sd-scripts arguments after the first `--`."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def repaired_target(args: argparse.Namespace, extra: list[str]) -> Target:
    """The Target, after renaming unknown keys of lorasetup.toml / [tool.lorasetup] that have one clear right
    name (`bootstrap --fix --yes`); otherwise the plan is shown and the config error stands (exit 2)."""
    for _ in range(len(FIELD_NAMES)):
        try:
            return make_target(args, extra)
        except UnknownKey as exc:
            if exc.rename_to is None:
                raise
            fix, why = try_edit_fix(f"rename `{exc.key}` to `{exc.rename_to}` in {exc.path}",
                                    [(exc.path, [Change(exc.table, exc.key, rename_to=exc.rename_to)])], safe=False)
            if fix is None or not (args.fix and args.yes) or args.dry_run:
                state = "cannot be made safely: " + str(why) if fix is None else \
                    "dry run" if args.dry_run else "needs --fix --yes"
                lines = [f"      $ {c}" for c in (fix.commands if fix else [])]
                raise ConfigError("\n".join([str(exc), f"  [{state}] {exc.path.name}: rename `{exc.key}` to "
                                                         f"`{exc.rename_to}`", *lines])) from None
            try:
                fix.apply()
            except FixError as failed:
                raise ConfigError(f"{exc}\n  [fix failed] {failed}") from None
            err(f"  [fixed] {exc.path.name}: renamed `{exc.key}` to `{exc.rename_to}` (backup next to it)")
    return make_target(args, extra)


def make_target(args: argparse.Namespace, extra: list[str]) -> Target:
    flags: dict[str, Any] = {s.name: getattr(args, s.name) for s in TARGET_FLAGS}
    if getattr(args, "steps", None) is not None:
        flags["smoke_steps"] = args.steps
    target = load_target(flags, config=args.config)
    target.train_args = [*target.train_args, *extra]
    return target


def selection(args: argparse.Namespace, tags: set[str]) -> tuple[list[Check], list[Check]]:
    """The registry less `--skip`ped checks (they neither run nor block), and the checks to run."""
    checks = all_checks()
    try:
        wanted = select(checks, only=args.only, skip=args.skip, tags=tags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    skipped = {c.id for c in select(checks, only=args.skip, tags=())} if args.skip else set()
    return [c for c in checks if c.id not in skipped], wanted


def cmd_doctor(args: argparse.Namespace, target: Target) -> int:
    checks, wanted = selection(args, tags={"preflight", "smoke"} if args.smoke else {"preflight"})
    start = time.perf_counter()
    with Context(target, verbose=args.verbose, fresh=args.fresh) as ctx:
        runner = Runner(ctx, checks, deadline(args))
        block = LiveBlock(sys.stderr, runner.order(wanted), args.verbose, use_color(sys.stderr))
        block.draw()
        stop = (lambda r: r.status in (Status.FAIL, Status.ERROR)) if args.exitfirst else None
        results = runner.run(wanted, on_result=block.add, fast_first=True, stop=stop)
        block.finish()
        notes = list(ctx.notes)
    elapsed = time.perf_counter() - start
    if args.verbose and notes:
        err("\nwarm cache:" + "".join(f"\n  {n}" for n in notes))
    stopped = len(results) < len(runner.order(wanted))
    err("\n" + summary_line(results, elapsed) + (" (stopped at the first failure: -x)" if stopped else ""))
    if args.json:
        print(json.dumps(to_json(target, results, elapsed_s=round(elapsed, 3)), indent=2, default=str))
    return exit_code(results, strict=args.strict)


def cmd_bootstrap(args: argparse.Namespace, target: Target) -> int:
    checks, wanted = selection(args, tags={"preflight"})
    apply = args.fix and not args.dry_run
    pip_args = shlex.split(args.pip_args)

    def fresh() -> Context:  # a fix may have edited lorasetup.toml: each round reads the setup again
        return Context(make_target(args, getattr(args, "passthrough", [])), verbose=args.verbose, pip_args=pip_args,
                       all_pins=args.all_pins)
    results, outcomes = bootstrap(fresh, checks, wanted, apply=apply, yes=args.yes, deadline=deadline(args))
    color = use_color(sys.stderr)
    for r in results:
        err(render_result(r, args.verbose, color))
    err("")
    heading = "fixes" if apply else ("plan (dry run: nothing changed)" if args.fix else
                                     "plan (run again with --fix to apply the safe fixes)")
    err(f"{heading}:" if outcomes else "nothing to fix automatically")
    shown: set[tuple[str, ...]] = set()
    for o in outcomes:
        err(f"  [{o.state}] {o.check_id}: {o.description}")
        if tuple(o.commands) in shown:
            err("      (the same command as above, run once)")
        for cmd in o.commands if tuple(o.commands) not in shown else []:
            err(f"      $ {cmd}")
        shown.add(tuple(o.commands))
        if o.message:
            err("      " + o.message.replace("\n", "\n      "))
    manual = needs_you(results, outcomes)
    states = [o.state for o in outcomes]
    err(f"\n{states.count('fixed')} fixed, {states.count('still failing') + states.count('fix failed')} still "
        f"failing, {len(manual) + states.count('needs --yes')} need you"
        + ("" if apply else f", {states.count('planned')} planned"))
    for line in per_check(results, outcomes, manual):
        err(line)
    if args.json:
        print(json.dumps(to_json(target, results, fixes=[o.to_dict() for o in outcomes]), indent=2, default=str))
    return exit_code(results)


def per_check(results: list[Result], outcomes: list[Outcome], manual: list[Result]) -> list[str]:
    """One line per check that was failing: fixed, still failing (and why), or what the person must do."""
    lines = [f"  {o.check_id:<20} {o.state}" + (f": {o.message.splitlines()[0]}" if o.message else "")
             for o in outcomes]
    lines += [f"  {r.check_id:<20} needs you: {r.hint or r.summary}" for r in manual]
    return lines


def cmd_list_checks(args: argparse.Namespace) -> int:
    for c in all_checks():
        needs = f"  (needs {', '.join(c.requires)})" if c.requires else ""
        print(f"{c.id:<22} [{', '.join(sorted(c.tags))}] {c.title}{needs}")
        if args.fixes:
            print(f"{'':<24}fix: {c.fixes or 'none: the hint says what to do'}")
    return 0


def cmd_env(args: argparse.Namespace, target: Target) -> int:
    from lorasetup.envinfo import render_env
    with Context(target, verbose=args.verbose) as ctx:
        print(render_env(ctx))
    return 0


def cmd_smoke(args: argparse.Namespace, target: Target) -> int:
    from lorasetup.commands import smoke_command
    with Context(target, verbose=args.verbose) as ctx:
        return smoke_command(ctx, keep=args.keep, as_json=args.json)


def cmd_train(args: argparse.Namespace, target: Target) -> int:
    from lorasetup.commands import train_command
    options = TrainOptions(quiet=args.quiet, on_nan=args.on_nan, stall_timeout_s=args.stall_timeout,
                           load_timeout_s=args.load_timeout)
    with Context(target, verbose=args.verbose) as ctx:
        return train_command(ctx, no_smoke=args.no_smoke, force=args.force, options=options, report_path=args.report)


def cmd_checkpoints(args: argparse.Namespace, target: Target) -> int:
    from lorasetup.commands import checkpoints_command
    with Context(target, verbose=args.verbose) as ctx:
        return checkpoints_command(ctx, args.dir, as_json=args.json)


COMMANDS: dict[str, Callable[..., int]] = {
    "doctor": cmd_doctor, "bootstrap": cmd_bootstrap, "env": cmd_env, "smoke": cmd_smoke, "train": cmd_train,
    "checkpoints": cmd_checkpoints,
}


def main(argv: list[str] | None = None) -> int:
    own, extra = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(own)
        if args.command == "list-checks":
            return cmd_list_checks(args)
        if args.command == "init":  # builds its own target, from the dataset folder
            return init_command(args, {s.name: getattr(args, s.name) for s in TARGET_FLAGS}, extra)
        args.passthrough = extra
        target = repaired_target(args, extra) if args.command == "bootstrap" else make_target(args, extra)
        return COMMANDS[args.command](args, target)
    except (UsageError, ConfigError) as exc:
        err(f"lorasetup: {exc}")
        return 2
    except KeyboardInterrupt:
        err("lorasetup: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
