"""What a LoRA run needs in memory and what the machine has: `estimate` (the arithmetic, with its calibration),
`parts` (component sizes from checkpoint headers), `inputs` (one run's settings, read from its context) and
`machine` (free RAM and GPU memory now). The device gate compares them; the smoke run measures the real peak
(lorasetup.sd.run.memwatch) and sets it beside the estimate."""
