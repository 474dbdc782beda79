"""device.distributed's cost on a good 2-process CPU setup, against one `accelerate launch` of an empty script
with the same flags, run interleaved so the machine's load hits both alike.

    ACCELERATE_USE_CPU=1 python benchmarks/bench_distributed.py [--python VENV/bin/python] [--rounds 5]

Prints the medians and the ratio (target: the check within 2x the empty launch).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorasetup.engine.target import Target
from lorasetup.sd.run.command import launcher  # the very command the check uses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def empty_launch(python: Path, flags: list[str], script: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*launcher(Target(python=python)), *flags, str(script)], check=True, capture_output=True)
    return time.perf_counter() - start


def check_time(python: Path, flags: list[str]) -> tuple[float, float]:
    """(the check's own duration, the whole `lorasetup doctor --only device.distributed`)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lorasetup.cli", "doctor", "--only", "device.distributed",
                          "--device", "cpu", "--python", str(python), "--launch-args", " ".join(flags), "--json"],
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    result = next(r for r in json.loads(out.stdout)["results"] if r["id"] == "device.distributed")
    if result["status"] != "ok":
        raise SystemExit(f"the check did not pass: {result['summary']}")
    return result["duration_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", type=Path, default=Path(sys.executable))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "empty.py"
        script.write_text("")
        empty, check, doctor = [], [], []
        for _ in range(args.rounds):
            flags = ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]
            empty.append(empty_launch(args.python, flags, script))
            own, wall = check_time(args.python, flags)
            check.append(own)
            doctor.append(wall)
    e, c, d = (statistics.median(x) for x in (empty, check, doctor))
    print(f"empty accelerate launch (2 processes): median {e:.2f} s  {[round(x, 2) for x in empty]}")
    print(f"device.distributed check:              median {c:.2f} s  {[round(x, 2) for x in check]}")
    print(f"whole doctor --only device.distributed: median {d:.2f} s")
    print(f"ratio check / empty launch: {c / e:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
