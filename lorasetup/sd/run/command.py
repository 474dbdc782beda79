"""Build and run the real training command, watching its output as it streams.

The command is `accelerate launch` from the training venv (with `--config_file` when the Target names an
accelerate config, else accelerate's own lookup, exactly as a person's launch would), the entry script,
and the training arguments: the Target's files, then its extra sd-scripts arguments. The smoke run is that
command with a few overrides (`smoke_plan`); `lorasetup train` runs it without them (`real_command`).

The child's stdout and stderr are merged into one pipe, so their interleaving is the real one, echoed live
and parsed as it comes (`Watch`): tqdm's carriage-return updates of the `steps` bar with `avr_loss=`, Rich
log records wrapped at 80 columns, Python tracebacks. The whole process group is killed at the first
non-finite loss, the first traceback, "No data found", or the timeout.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lorasetup.engine.probe import kill_tree
from lorasetup.engine.result import CheckFailed
from lorasetup.engine.target import Target, tomllib

SMOKE_OUTPUT_NAME = "lorasetup-smoke"
# What the smoke run takes out of the command line and the training config (sd-scripts option names).
STEP_OPTIONS = {"max_train_steps", "max_train_epochs"}  # epochs would override --max_train_steps
OUTPUT_OPTIONS = {"output_dir", "output_name", "save_model_as", "logging_dir"}  # replaced by temp paths
SAVE_EVERY_OPTIONS = {"save_every_n_epochs", "save_every_n_steps", "save_n_epoch_ratio", "save_last_n_epochs",
                      "save_last_n_epochs_state", "save_last_n_steps", "save_last_n_steps_state", "save_state",
                      "save_state_on_train_end"}
SAMPLE_EVERY_OPTIONS = {"sample_every_n_steps", "sample_every_n_epochs", "sample_at_first"}
UPLOAD_OPTIONS = {"huggingface_repo_id", "save_state_to_huggingface"}  # a 5-step LoRA is never uploaded
SMOKE_DROPPED = STEP_OPTIONS | OUTPUT_OPTIONS | SAVE_EVERY_OPTIONS | SAMPLE_EVERY_OPTIONS | UPLOAD_OPTIONS

# sd-scripts' training bar: tqdm(desc="steps") in train_network.py, postfix `avr_loss=` from set_postfix.
BAR = re.compile(r"\s*steps:\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]*)\]")
LOSS = re.compile(r"avr_loss=(?P<value>[^\s,\]]+)")
# A Rich log record's first line (library/utils.py setup_logging: RichHandler, 80 columns off a terminal).
RECORD = re.compile(r"^[\d\-/:\[\] .,]*?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +(?P<msg>\S.*)$")
RECORD_PATH = re.compile(r"\s+[\w.-]+\.py:\d+\s*$")
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")  # torch.distributed prefixes each line of a child's output
TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
LAUNCHER_ERRORS = ("subprocess.CalledProcessError", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
NO_DATA = "No data found"
TRACEBACK_SETTLE_S = 0.5  # after an exception line, wait this long for a chained traceback
TRACEBACK_MAX_S = 5.0  # kill this long after a traceback started, even without its exception line


# ---- building the command --------------------------------------------------------------------------------

def launcher(target: Target) -> list[str]:
    """`accelerate launch` from the training venv (or `python -m accelerate.commands.launch` without the
    console script), with the Target's accelerate config when it names one."""
    python = target.python_exe
    exe = python.parent / ("accelerate.exe" if os.name == "nt" else "accelerate")
    argv = [str(exe), "launch"] if exe.is_file() else [str(python), "-m", "accelerate.commands.launch"]
    if target.accelerate_config is not None:
        argv += ["--config_file", str(target.accelerate_config)]
    return argv


def script_args(target: Target) -> list[str]:
    """The Target's files as sd-scripts options, then its extra arguments (the command line wins in sd-scripts)."""
    args: list[str] = []
    for option, value in (("config_file", target.train_config), ("dataset_config", target.dataset_config),
                          ("pretrained_model_name_or_path", target.base_model), ("output_dir", target.output_dir)):
        if value is not None:
            args += [f"--{option}", str(value)]
    return args + list(target.train_args)


def real_command(target: Target) -> list[str]:
    """The command of the real run."""
    if target.sd_scripts is None:
        raise CheckFailed("no sd-scripts checkout: nothing to launch",
                          hint="pass --kohya-root or set kohya_root in lorasetup.toml")
    return [*launcher(target), str(target.sd_scripts / target.script), *script_args(target)]


def option_names(args: list[str]) -> list[str]:
    """The sd-scripts option names in a command line, underscored."""
    return [t[2:].split("=", 1)[0].replace("-", "_") for t in args if t.startswith("--") and len(t) > 2]


def strip_options(args: list[str], names: set[str]) -> list[str]:
    """`args` without the options in `names` and their values (`--x v`, `--x=v`, `--x v1 v2`, `--flag`)."""
    out: list[str] = []
    dropping = False
    for token in args:
        if token.startswith("--") and len(token) > 2:
            dropping = token[2:].split("=", 1)[0].replace("-", "_") in names
        if not dropping:
            out.append(token)
    return out


def toml_value(value: Any) -> str:
    """One value in TOML syntax (what tomllib returns: str, int, float, bool, list, dict, dates)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return value.isoformat()  # datetime, date, time


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def config_keys(config: Path) -> list[str]:
    """The keys of a training config as sd-scripts sees them: sections flattened one level."""
    with config.open("rb") as fh:
        data = tomllib.load(fh)
    return [k for k, v in data.items() if not isinstance(v, dict)] + \
        [k for v in data.values() if isinstance(v, dict) for k in v]


def config_without(config: Path, names: set[str], dest: Path) -> Path | None:
    """Write `config` minus the keys in `names` (top level and inside its sections, as sd-scripts flattens
    them) to `dest`; None when it has none of them. Everything else keeps its place and value."""
    flat = config_keys(config)
    if not names.intersection(flat):
        return None
    with config.open("rb") as fh:
        data = tomllib.load(fh)
    lines = [f"# {config} for a lorasetup smoke run, without: {', '.join(sorted(names.intersection(flat)))}"]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and k not in names]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{toml_key(section)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if k not in names]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@dataclass
class SmokePlan:
    """The smoke command, the real command it derives from, and where the smoke run writes."""

    argv: list[str]
    real: list[str]
    temp: Path
    output: Path
    config_copy: Path | None = None
    dropped: list[str] = field(default_factory=list)


def smoke_plan(target: Target, config_file: Path | None, logging: bool, temp: Path, steps: int) -> SmokePlan:
    """The real command with `--max_train_steps=<steps>`, a fresh output dir and name under `temp`, a
    .safetensors output, and no save-every / sample-every / upload options (also taken out of a copy of the
    training config, since sd-scripts lets no command-line flag unset a config key)."""
    real = real_command(target)
    cut = len(launcher(target)) + 1
    args = strip_options(real[cut:], SMOKE_DROPPED)
    dropped = set(option_names(real[cut:])) & SMOKE_DROPPED
    copy = None
    if config_file is not None and config_file.is_file():
        copy = config_without(config_file, SMOKE_DROPPED, temp / f"smoke-{config_file.name}")
        if copy is not None:
            args = ["--config_file", str(copy), *strip_options(args, {"config_file"})]
            dropped |= set(config_keys(config_file)) & SMOKE_DROPPED
    output = temp / "output"
    overrides = [f"--max_train_steps={steps}", f"--output_dir={output}", f"--output_name={SMOKE_OUTPUT_NAME}",
                 "--save_model_as=safetensors"]
    if logging:
        overrides.append(f"--logging_dir={temp / 'logs'}")
    return SmokePlan([*real[:cut], *args, *overrides], real, temp, output / f"{SMOKE_OUTPUT_NAME}.safetensors",
                     copy, sorted(dropped))


def run_env() -> dict[str, str]:
    """The environment of both runs: the caller's, with unbuffered Python so prints interleave truly."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


# ---- watching the output ---------------------------------------------------------------------------------

class Watch:
    """Parses a training run's merged output as it arrives; says when to stop it."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.pending = ""
        self.tail: deque[str] = deque(maxlen=60)
        self.total: int | None = None
        self.bar_zero_at: float | None = None
        self.step_at: dict[int, float] = {}
        self.loss: dict[int, float] = {}
        self.nonfinite: tuple[int, str] | None = None
        self.no_data: str | None = None
        self.in_traceback = False
        self.traceback_at: float | None = None
        self.traceback_last: float | None = None
        self.error_line: str | None = None
        self.error_log: str | None = None
        self._record: tuple[int, str, list[str]] | None = None  # message column, level, message parts

    def feed(self, text: str, now: float) -> None:
        buf = self.pending + text
        start = 0
        for sep in re.finditer(r"\r\n|\r|\n", buf):
            segment = buf[start:sep.start()]
            rest = self._bar(segment, now)
            if sep.group() != "\r":
                self._line(segment if rest is None else rest, now)
            start = sep.end()
        self.pending = buf[start:]
        if self.pending:
            self._bar(self.pending, now)  # tqdm's latest state has no terminator until its next update

    def finish(self, now: float) -> None:
        if self.pending:
            rest = self._bar(self.pending, now)
            self._line(self.pending if rest is None else rest, now)
            self.pending = ""
        self._end_record()

    def _bar(self, segment: str, now: float) -> str | None:
        """Record a `steps` bar at the start of `segment`; return the text after it, or None if no bar."""
        m = BAR.match(segment)
        if not m:
            return None
        n, self.total = int(m["n"]), int(m["total"])
        if n == 0:
            self.bar_zero_at = self.bar_zero_at or now
        else:
            self.step_at.setdefault(n, now)
        loss = LOSS.search(m["info"])
        if loss and n > 0:
            try:
                value = float(loss["value"])
            except ValueError:
                return segment[m.end():]
            self.loss[n] = value
            if not math.isfinite(value) and self.nonfinite is None:
                self.nonfinite = (n, loss["value"])
        return segment[m.end():]

    def _line(self, text: str, now: float) -> None:
        line = RANK_PREFIX.sub("", text.rstrip())
        if line.strip():
            self.tail.append(line)
        if NO_DATA in line and self.no_data is None:
            self.no_data = line.strip()
        if TRACEBACK in line:
            self._end_record()
            self.in_traceback = True
            self.traceback_at = self.traceback_at or now
            self.traceback_last = now
            return
        if self.in_traceback:
            self.traceback_last = now
            if not line.strip() or line[0] in " \t" or line.startswith(CHAINED):
                return
            self.in_traceback = False
            if not (self.error_line and line.startswith(LAUNCHER_ERRORS)):
                self.error_line = line.strip()
            return
        self._log(line)

    def _log(self, line: str) -> None:
        """Join a Rich record's wrapped lines (indented to its message column) into one message."""
        if self._record is not None:
            col, _, parts = self._record
            if len(line) > col and not line[:col].strip():
                parts.append(line[col:].strip())
                return
            self._end_record()
        m = RECORD.match(line)
        if m:
            self._record = (m.start("msg"), m["level"], [RECORD_PATH.sub("", m["msg"]).strip()])

    def _end_record(self) -> None:
        if self._record is None:
            return
        _, level, parts = self._record
        message = " ".join(p for p in parts if p)
        if level in ("ERROR", "CRITICAL"):
            self.error_log = message
        if NO_DATA in message and self.no_data is None:
            self.no_data = message
        self._record = None

    def stop_reason(self, now: float) -> str | None:
        """`nonfinite`, `no-data` or `traceback` when the run must be stopped now, else None."""
        if self.nonfinite:
            return "nonfinite"
        if self.no_data:
            return "no-data"
        if self.traceback_at is not None:
            settled = self.error_line and not self.in_traceback and now - (self.traceback_last or now) >= \
                TRACEBACK_SETTLE_S
            if settled or now - self.traceback_at >= TRACEBACK_MAX_S:
                return "traceback"
        return None

    def real_error(self) -> str | None:
        """The line that says what went wrong: the last traceback's final line, else the last ERROR record."""
        return self.error_line or self.error_log or self.no_data

    @property
    def steps_done(self) -> int:
        return max(self.step_at, default=0)

    def timing(self) -> dict[str, float | None]:
        """Load time (start to the bar at 0), the first step, and seconds per step after the first."""
        load = self.bar_zero_at - self.start if self.bar_zero_at is not None else None
        first = self.step_at[1] - self.bar_zero_at if 1 in self.step_at and self.bar_zero_at is not None else None
        last = self.steps_done
        if last >= 2 and 1 in self.step_at:
            per_step = (self.step_at[last] - self.step_at[1]) / (last - 1)
        else:
            per_step = first
        return {"load_s": load, "first_step_s": first, "s_per_step": per_step}


@dataclass
class RunOutcome:
    returncode: int | None
    stopped: str | None  # nonfinite | no-data | traceback | timeout | None (ran to its end)
    wall_s: float
    peak_rss_bytes: int | None
    watch: Watch


def _reap(proc: subprocess.Popen, deadline: float) -> tuple[bool, int | None]:
    """Wait for the child until `deadline`; (exited, peak RSS in bytes of it and its reaped children)."""
    if not hasattr(os, "wait4"):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False, None
        return True, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return True, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        if time.monotonic() >= deadline:
            return False, None
        time.sleep(0.05)


def run_streaming(argv: list[str], *, timeout: float, echo: IO[str] | None, cwd: Path | None = None,
                  env: dict[str, str] | None = None, watch_output: bool = True) -> RunOutcome:
    """Run `argv`, echo its merged output live to `echo`, parse it, and stop it when the Watch says so."""
    start = time.monotonic()
    watch = Watch(start)
    deadline = start + timeout
    try:
        proc = subprocess.Popen(argv, cwd=str(cwd) if cwd else None, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=os.name != "nt",
                                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
    except OSError as exc:
        raise CheckFailed(f"cannot start {argv[0]}: {exc.strerror or exc}",
                          hint="check the training interpreter (--python) and its accelerate install") from None
    chunks: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                chunks.put(decoder.decode(b"", final=True))
                chunks.put(None)
                return
            chunks.put(decoder.decode(data))

    reader = threading.Thread(target=read, name="lorasetup-run-output", daemon=True)
    reader.start()

    def take(text: str) -> None:
        if echo is not None:
            echo.write(text)
            echo.flush()
        if watch_output:
            watch.feed(text, time.monotonic())

    stopped: str | None = None
    while stopped is None:
        left = deadline - time.monotonic()
        if left <= 0:
            stopped = "timeout"
            break
        try:
            item = chunks.get(timeout=min(0.25, left))
        except queue.Empty:
            item = ""
        if item is None:
            break
        if item:
            take(item)
        stopped = watch.stop_reason(time.monotonic()) if watch_output else None
    exited, peak = (False, None) if stopped else _reap(proc, deadline)
    if not exited:
        stopped = stopped or "timeout"
        kill_tree(proc)
        _reap(proc, time.monotonic() + 30)  # the trainer was killed, not reaped by the launcher: no peak figure
    reader.join(timeout=5)
    while not chunks.empty():
        item = chunks.get_nowait()
        if item:
            take(item)
    proc.stdout.close()
    watch.finish(time.monotonic())
    return RunOutcome(proc.returncode, stopped, time.monotonic() - start, peak, watch)
