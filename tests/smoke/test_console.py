"""What a person sees of the long run, on recorded output: a live status line on a terminal with the run's own
lines above it (never its steps bar), plain status lines at most every interval off a terminal; the figures'
units and the loss sparkline; the Watch's save lines and step timing; the duration flags."""

from __future__ import annotations

import argparse
import io
import math

import pytest

from lorasetup.cli import build_parser, seconds
from lorasetup.sd.run.console import Console, status_text
from lorasetup.sd.run.units import duration, size, sparkline
from lorasetup.sd.run.watch import Watch

LOG = "2026-11-26 11:40:27 INFO     epoch is incremented.             train_util.py:784\n"


def bar(n: int, loss: float | str) -> str:
    return f"\rsteps:  {10 * n}%|█         | {n}/10 [00:0{n}<00:09, 1.00s/it, avr_loss={loss}]"


def feed(console: Console, watch: Watch, text: str, now: float) -> None:
    watch.feed(text, now)
    console.poll(watch, now)


def test_live_status_line_with_the_runs_lines_above_it():
    screen = io.StringIO()
    console = Console(screen, live=True, total=10)
    watch = Watch(0.0, on_line=console.line)
    feed(console, watch, "\rsteps:   0%|          | 0/10 [00:00<?, ?it/s]", 30.0)
    feed(console, watch, bar(1, 0.5) + "\n" + LOG, 32.0)
    feed(console, watch, bar(2, 0.4) + bar(3, 0.3), 35.0)
    console.close(watch, 36.0)
    text = screen.getvalue()
    assert "steps:" not in text  # the status line replaces the run's own bar
    assert "\r\033[K2026-11-26 11:40:27 INFO     epoch is incremented." in text
    assert text.endswith("\r\033[Kstep 3/10 · avr_loss 0.3 · 1.50 s/step · 36 s elapsed · ETA 10 s\n")


def test_plain_status_lines_at_most_every_interval_and_quiet_hides_the_runs_lines():
    screen = io.StringIO()
    console = Console(screen, live=False, quiet=True, interval_s=30.0, total=10)
    watch = Watch(0.0, on_line=console.line)
    for n in range(1, 8):
        feed(console, watch, bar(n, 1.0 / n) + ("\n" + LOG if n == 2 else ""), 10.0 * n)
    console.note("checkpoint step 5: x.safetensors (1.0 MiB) ok")
    console.close(watch, 75.0)
    lines = screen.getvalue().splitlines()
    shown = [line.split(" · ")[0] for line in lines if line.startswith("step ")]
    assert shown == ["step 1/10", "step 4/10", "step 7/10"]  # 10 s steps, 30 s apart; close adds no repeat
    assert "lorasetup: checkpoint step 5: x.safetensors (1.0 MiB) ok" in lines and "epoch is" not in screen.getvalue()
    assert "\r" not in screen.getvalue()


def test_status_before_the_first_step_and_a_nonfinite_loss():
    watch = Watch(0.0)
    assert status_text(watch, 65.0, 920) == "loading · 65 s elapsed"
    watch.feed(bar(1, 0.5) + bar(2, "nan"), 70.0)
    assert status_text(watch, 71.0, 920).startswith("step 2/10 · avr_loss nan (not finite)")


def test_watch_records_saves_removals_and_the_median_step():
    watch = Watch(0.0)
    watch.feed("\rsteps:   0%| | 0/10 [00:00<?, ?it/s]", 1.0)
    for n, at in ((1, 5.0), (2, 6.0), (3, 7.0), (4, 17.0)):
        watch.feed(bar(n, 0.5), at)
    watch.feed("\nsaving checkpoint: out/t-step00000004.safetensors\n"
               "removing old checkpoint: out/t-step00000002.safetensors\n", 17.5)
    assert watch.saved == {"out/t-step00000004.safetensors": 4} and watch.removed == {"out/t-step00000002.safetensors"}
    assert watch.median_step_s() == 1.0 and watch.last_step_at == 17.0


def test_units_and_sparkline():
    assert [duration(s) for s in (42, 420, 3900)] == ["42 s", "7 min", "1 h 05 min"]
    assert [size(b) for b in (512, 3.2 * 2**20, 1.5 * 2**30, 150 * 2**20)] == ["512 B", "3.20 MiB", "1.50 GiB",
                                                                                 "150 MiB"]
    assert sparkline([1.0, 0.5, 0.25, 0.125]) == "█▄▂▁"
    assert sparkline([1.0, 1.0, math.nan]) == "▁▁×"
    line = sparkline([float(i % 7) for i in range(1000)], width=60)
    assert len(line) == 60 and set(line) <= set("▁▂▃▄▅▆▇█")


def test_duration_flags():
    assert [seconds(t) for t in ("600", "90s", "10m", "1.5h")] == [600.0, 90.0, 600.0, 5400.0]
    for bad in ("ten", "0", "-5m"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)


def test_train_flags():
    args = build_parser().parse_args(["train", "--quiet", "--on-nan", "warn", "--stall-timeout", "5m",
                                      "--load-timeout", "1h", "--report", "run.json"])
    assert (args.quiet, args.on_nan, args.stall_timeout, args.load_timeout, str(args.report)) == \
        (True, "warn", 300.0, 3600.0, "run.json")
    defaults = build_parser().parse_args(["train"])
    assert (defaults.on_nan, defaults.stall_timeout, defaults.load_timeout) == ("stop", 600.0, None)
