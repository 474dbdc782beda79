"""The file the training interpreter runs for every probe program: `python probe_entry.py MARKER PROGRAM`.

It runs in the user's venv, where lorasetup is not installed, so it imports only the standard library and keeps
to Python 3.6's syntax, without `from __future__ import annotations` (a probe must be able to say "this Python
is too old"). It reads the
program's parameters (one JSON object) from stdin, sends everything the program prints to stderr so that import
noise cannot corrupt the answer, calls the program's `main(params, checkpoint)` and writes the dict it returns
as one `MARKER{json}` line on stdout. `checkpoint(answer)` writes such a line at once: when compiled code kills
the interpreter later, the last one written is the answer (lorasetup.engine.probe reads the last).
"""

import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and os.path.realpath(sys.path[0]) == _HERE:
    del sys.path[0]  # this folder is lorasetup's, not the venv's; a training run has its script's folder here

import json  # noqa: E402 - only after this folder left sys.path
import runpy  # noqa: E402


def main() -> None:
    marker, program = sys.argv[1], sys.argv[2]
    params = json.loads(sys.stdin.read() or "{}")
    out, sys.stdout = sys.stdout, sys.stderr

    def checkpoint(answer: dict) -> None:
        out.write("\n" + marker + json.dumps(answer, default=str) + "\n")
        out.flush()

    namespace = runpy.run_path(program, run_name="lorasetup_probe")
    checkpoint(namespace["main"](params, checkpoint))
    sys.stderr.flush()
    os._exit(0)  # the answer is written; tearing down torch, transformers or diffusers takes seconds


if __name__ == "__main__":
    main()
