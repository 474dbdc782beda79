"""What a person sees of the long run: the run's own lines passed through (not with --quiet), lorasetup's notes
(each checkpoint's verdict, warnings), and the run's state: a live status line at the bottom of a terminal, or,
off one (a log file, CI), a plain status line at most every `interval_s` seconds.

The run's own `steps` bar is not passed through: the status line says the same and more (s/step, ETA).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from typing import IO

from lorasetup.sd.run.checkpoints import Checkpoint
from lorasetup.sd.run.stream import Stop
from lorasetup.sd.run.units import duration, size
from lorasetup.sd.run.watch import Watch

LIVE_REDRAW_S = 0.5  # a terminal's status line is redrawn at most this often (its clock ticks in seconds)
CLEAR = "\r\033[K"


def status_text(watch: Watch, now: float, total: int | None) -> str:
    """`step 23/40 · avr_loss 0.1234 · 11.9 s/step · 4 min 40 s elapsed · ETA 3 min 10 s`."""
    elapsed = f"{duration(now - watch.start)} elapsed"
    total = watch.total or total
    step = watch.steps_done
    if not step:
        return f"loading · {elapsed}" if watch.bar_zero_at is None else f"step 0/{total} · {elapsed}"
    parts = [f"step {step}/{total or '?'}"]
    loss = watch.loss.get(step, watch.loss.get(step - 1))
    if loss is not None:
        parts.append(f"avr_loss {loss:.4g}" if math.isfinite(loss) else f"avr_loss {loss} (not finite)")
    per_step = watch.median_step_s()
    if per_step is not None:
        parts.append(f"{per_step:.2f} s/step")
    parts.append(elapsed)
    if per_step is not None and total:
        parts.append(f"ETA {duration(max(0, total - step) * per_step)}")
    return " · ".join(parts)


@dataclass
class Console:
    """The long run's screen. A Monitor of the stream (it never stops the run); `line` is the Watch's
    on_line."""

    stream: IO[str]
    live: bool
    quiet: bool = False
    interval_s: float = 30.0
    total: int | None = None
    on_nan: str = "stop"
    shown: str = ""
    drawn_at: float = -math.inf
    printed: tuple[int, float] = (0, -math.inf)  # step and time of the last plain status line
    nan_noted: bool = False
    notes: list[str] = field(default_factory=list)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _emit(self, text: str) -> None:
        """A whole line above the live status line (which is redrawn below it)."""
        self._write((CLEAR if self.live and self.shown else "") + text + "\n" + (self.shown if self.live else ""))

    def line(self, text: str) -> None:
        if not self.quiet:
            self._emit(text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._emit(f"lorasetup: {text}")

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        at = f"step {checkpoint.step}: " if checkpoint.step is not None else ""
        weight = f" ({size(checkpoint.size)})" if checkpoint.size else ""
        self.note(f"checkpoint {at}{checkpoint.path.name}{weight} {checkpoint.verdict}")

    def poll(self, watch: Watch, now: float) -> Stop | None:
        if watch.nonfinite and self.on_nan != "stop" and not self.nan_noted:
            self.nan_noted = True
            step, value = watch.nonfinite
            self.note(f"avr_loss={value} at step {step}: the run is diverging; carrying on (--on-nan warn)")
        if self.live and now - self.drawn_at >= LIVE_REDRAW_S:
            self.drawn_at = now
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            self.shown = status_text(watch, now, self.total)[:width]
            self._write(CLEAR + self.shown)
        elif not self.live:
            step, at = self.printed
            if watch.steps_done > step and (step == 0 or now - at >= self.interval_s):
                self.printed = (watch.steps_done, now)
                self._write(status_text(watch, now, self.total) + "\n")
        return None

    def close(self, watch: Watch, now: float) -> None:
        """The last state on its own line (a terminal's status line is finished with a newline)."""
        if self.live:
            self._write(CLEAR + status_text(watch, now, self.total) + "\n")
            self.shown = ""
        elif watch.steps_done > self.printed[0]:
            self._write(status_text(watch, now, self.total) + "\n")
