"""The lorasetup process itself never imports torch, accelerate or sd-scripts: probes do, in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from lorasetup.checks import all_checks

HEAVY = {"torch", "accelerate", "transformers", "diffusers", "library", "networks", "bitsandbytes", "xformers"}
CODE = """
import json, sys
from lorasetup.cli import main
rc = main(["doctor", "--kohya-root", sys.argv[1], "--python", sys.executable, "--device", "cpu", "--smoke",
           "--json"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in set(json.loads(sys.argv[2])))
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_doctor_runs_every_gate_without_importing_the_training_stack(make_kohya):
    """Runs every check, probes included (they import torch in the child), then inspects sys.modules."""
    root = make_kohya("populated")
    proc = subprocess.run([sys.executable, "-c", CODE, str(root), json.dumps(sorted(HEAVY))],
                          capture_output=True, text=True, timeout=600)
    *doc_lines, last = proc.stdout.strip().splitlines()
    report, doc = json.loads(last), json.loads("\n".join(doc_lines))
    assert report["heavy"] == [], proc.stderr
    assert report["rc"] in (0, 1), proc.stderr
    assert {r["id"] for r in doc["results"]} == {c.id for c in all_checks()}
    assert re.search(r"\d+ ok, \d+ warn, \d+ fail, \d+ skip, \d+ error in", proc.stderr)


def test_importing_the_cli_imports_nothing_heavy():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lorasetup.cli"],
                          capture_output=True, text=True, timeout=60)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "lorasetup" in imported
    assert not imported & HEAVY
