"""`lorasetup` as a real process with the registry cut down to the repo gate, for tests that signal a running
`lorasetup train` on the fixture tree (not an installed sd-scripts, so the deps gate could not pass there; the
gates have their own tests)."""

from __future__ import annotations

import sys

from lorasetup import cli, commands
from lorasetup.checks import all_checks

if __name__ == "__main__":
    gated = [c for c in all_checks() if c.gate == "repo"]
    commands.all_checks = lambda: gated  # type: ignore[assignment]
    sys.exit(cli.main())
