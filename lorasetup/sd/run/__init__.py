"""The training run: its command (command.py) and what it will do (plan.py), the parser of its output (watch.py),
the child process that streams it (stream.py); for the long run its guards (guards.py), checkpoints
(checkpoints.py), screen (console.py) and summary (summary.py), driven by longrun.py; how a run dies
(failures.py) and the units of its figures (units.py)."""
