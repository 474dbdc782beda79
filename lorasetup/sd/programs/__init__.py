"""Programs lorasetup runs in the TRAINING interpreter, by path: self-contained, standard library at module
level, never imported by lorasetup's own process."""
