"""The training run: its command (command.py), the parser of its output (watch.py), the process that streams
it (stream.py), and the long run's guards, checkpoints, console and summary."""
