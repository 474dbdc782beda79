"""Parse a training run's merged output as it streams: the steps bar and its loss, log records, tracebacks.

The child's stdout and stderr arrive as one pipe, so their interleaving is the real one: tqdm's carriage-return
updates of the `steps` bar with `avr_loss=`, Rich log records wrapped at 80 columns, Python tracebacks, and the
`saving checkpoint: <file>` lines of each save. The Watch only reads; the stream decides when to stop.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import deque
from collections.abc import Callable

# sd-scripts' training bar: tqdm(desc="steps") in train_network.py, postfix `avr_loss=` from set_postfix.
BAR = re.compile(r"\s*steps:\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]*)\]")
LOSS = re.compile(r"avr_loss=(?P<value>[^\s,\]]+)")
# A Rich log record's first line (library/utils.py setup_logging: RichHandler, 80 columns off a terminal).
RECORD = re.compile(r"^[\d\-/:\[\] .,]*?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +(?P<msg>\S.*)$")
RECORD_PATH = re.compile(r"\s+[\w.-]+\.py:\d+\s*$")
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")  # torch.distributed prefixes each line of a child's output
# train_network.py save_model / remove_model: accelerator.print(f"\nsaving checkpoint: {ckpt_file}")
SAVING = re.compile(r"^(?P<what>saving|removing old) checkpoint: (?P<path>.+?)\s*$")
TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
LAUNCHER_ERRORS = ("subprocess.CalledProcessError", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
NO_DATA = "No data found"
TRACEBACK_SETTLE_S = 0.5  # after an exception line, wait this long for a chained traceback
TRACEBACK_MAX_S = 5.0  # kill this long after a traceback started, even without its exception line


class Watch:
    """Parses a training run's merged output as it arrives; says when the output alone means stop.

    `on_line` receives each complete line that is not the steps bar (for a console that draws its own bar)."""

    def __init__(self, start: float, on_line: Callable[[str], None] | None = None) -> None:
        self.start = start
        self.on_line = on_line
        self.pending = ""
        self.tail: deque[str] = deque(maxlen=60)
        self.total: int | None = None
        self.bar_zero_at: float | None = None
        self.step_at: dict[int, float] = {}
        self.loss: dict[int, float] = {}
        self.nonfinite: tuple[int, str] | None = None
        self.saved: dict[str, int] = {}  # checkpoint path as printed -> the step it was saved at
        self.removed: set[str] = set()  # checkpoints sd-scripts deleted (save_last_n_steps / _epochs)
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
            if sep.group() == "\r":
                self._bar(segment, now)  # a tqdm update, overwritten by the next one
            else:
                self._complete(segment, now)
            start = sep.end()
        self.pending = buf[start:]
        if self.pending:
            self._bar(self.pending, now)  # tqdm's latest state has no terminator until its next update

    def finish(self, now: float) -> None:
        if self.pending:
            self._complete(self.pending, now)
            self.pending = ""
        self._end_record()

    def _complete(self, segment: str, now: float) -> None:
        """A complete line: a bar glued to text (a traceback, say) leaves that text as the line."""
        rest = self._bar(segment, now)
        line = segment if rest is None else rest
        if self.on_line is not None and (rest is None or rest.strip()):
            self.on_line(line)
        self._line(line, now)

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
            self._traceback_line(line, now)
            return
        self._saving(line)
        self._log(line)

    def _traceback_line(self, line: str, now: float) -> None:
        """Inside a traceback: frames are indented; the first unindented line is the exception."""
        self.traceback_last = now
        if not line.strip() or line[0] in " \t" or line.startswith(CHAINED):
            return
        self.in_traceback = False
        if not (self.error_line and line.startswith(LAUNCHER_ERRORS)):
            self.error_line = line.strip()

    def _saving(self, line: str) -> None:
        m = SAVING.match(line)
        if m and m["what"] == "saving":
            self.saved[m["path"]] = self.steps_done
        elif m:
            self.removed.add(m["path"])

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

    def stop_reason(self, now: float, on_nan: str = "stop") -> str | None:
        """`nonfinite`, `no-data` or `traceback` when the output alone means the run must stop now, else None.
        With `on_nan="warn"` a non-finite loss is left to the caller."""
        if self.nonfinite and on_nan == "stop":
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

    @property
    def last_step_at(self) -> float | None:
        """When the latest step was first seen (None before the first step)."""
        return self.step_at[self.steps_done] if self.step_at else None

    def median_step_s(self) -> float | None:
        """The median time between consecutive steps (the first step, which includes warm-up, left out)."""
        gaps = [self.step_at[n] - self.step_at[n - 1] for n in sorted(self.step_at) if n >= 2 and n - 1 in self.step_at]
        return statistics.median(gaps) if gaps else None

    def timing(self) -> dict[str, float | None]:
        """Load time (start to the bar at 0), the first step, and seconds per step after the first."""
        load = self.bar_zero_at - self.start if self.bar_zero_at is not None else None
        first = self.step_at[1] - self.bar_zero_at if 1 in self.step_at and self.bar_zero_at is not None else None
        last = self.steps_done
        per_step = (self.step_at[last] - self.step_at[1]) / (last - 1) if last >= 2 and 1 in self.step_at else first
        return {"load_s": load, "first_step_s": first, "s_per_step": per_step}
