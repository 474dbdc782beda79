"""sd-scripts' own answer for each generated dataset, run in the sd-scripts checkout's venv (cwd = the checkout).

For each case it runs the real `NetworkTrainer.train(args)` of train_network.py with `--debug_dataset`, which
builds the DatasetGroup exactly as a training run does (set_seed, the latents caching strategy,
BlueprintGenerator + ConfigSanitizer, generate_dataset_group_by_blueprint with each dataset's make_buckets) and
then hands it to `train_util.debug_dataset`, which this program replaces by a function that keeps the group.
Two stand-ins, both outside the dataset's arithmetic: the tokenize strategy is None (building a DatasetGroup does
not tokenize; loading a CLIP tokenizer per case would cost seconds), and the strategy singletons are reset
between cases (a training process sets each once).

Then train_network.py's step count and its training loop's save logic are replayed over a DataLoader of the
group's length with a real `accelerate.Accelerator(gradient_accumulation_steps=...)`, whose `sync_gradients`
decides when an optimizer step happens (the loop skeleton is copied from NetworkTrainer.train).

Usage: python sd_group.py cases.json answers.jsonl  (cases: [{"id": ..., "argv": [...]}, ...]).
Standalone: it imports only sd-scripts and its requirements, never lorasetup.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from typing import Any


def loop(args: Any, n: int) -> dict:
    """train_network.py: max_train_steps from epochs, the epoch count, save_n_epoch_ratio, then the training
    loop's step and epoch saves over a DataLoader of n batches (one process)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from library import train_util

    g = args.gradient_accumulation_steps
    if args.max_train_epochs is not None:
        args.max_train_steps = args.max_train_epochs * math.ceil(n / 1 / g)
    per_epoch = math.ceil(n / g)
    epochs = math.ceil(args.max_train_steps / per_epoch)
    if args.save_n_epoch_ratio is not None and args.save_n_epoch_ratio > 0:
        args.save_every_n_epochs = math.floor(epochs / args.save_n_epoch_ratio) or 1
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(gradient_accumulation_steps=g, cpu=True)
    model = accelerator.prepare(torch.nn.Linear(1, 1))
    loader = accelerator.prepare(torch.utils.data.DataLoader(list(range(n)), batch_size=1))
    ext = "." + args.save_model_as
    saves: list[list] = []
    global_step = 0
    for epoch in range(epochs):
        for _ in loader:
            with accelerator.accumulate(model):
                pass
            if accelerator.sync_gradients:
                global_step += 1
                if args.save_every_n_steps is not None and global_step % args.save_every_n_steps == 0:
                    saves.append([global_step, "step", train_util.get_step_ckpt_name(args, ext, global_step)])
            if global_step >= args.max_train_steps:
                break
        if args.save_every_n_epochs is not None:
            if (epoch + 1) % args.save_every_n_epochs == 0 and (epoch + 1) < epochs:
                saves.append([global_step, "epoch", train_util.get_epoch_ckpt_name(args, ext, epoch + 1)])
    saves.append([global_step, "final", train_util.get_last_ckpt_name(args, ext)])
    return {"total_steps": args.max_train_steps, "steps_per_epoch": per_epoch, "epochs": epochs, "saves": saves,
            "final_step": global_step}


def _buckets(dataset: Any) -> list[list[int]]:
    """A dataset's non-empty buckets after make_buckets: [width, height, images x repeats]."""
    manager = dataset.bucket_manager
    return [[*reso, len(bucket)] for reso, bucket in zip(manager.resos, manager.buckets) if bucket]


class Trainer:
    """train_network.py's NetworkTrainer with debug_dataset's hand-off captured."""

    def __init__(self) -> None:
        import train_network
        from library import strategy_base, train_util

        self.captured: list = []
        train_util.debug_dataset = lambda dataset, show_input_ids=False: self.captured.append(dataset)
        self.train_util = train_util
        self.parser = train_network.setup_parser()
        self.trainer = train_network.NetworkTrainer()
        self.trainer.get_tokenize_strategy = lambda args: None
        self.trainer.get_tokenizers = lambda strategy: []
        self.strategies = (strategy_base.TokenizeStrategy, strategy_base.TextEncodingStrategy,
                           strategy_base.TextEncoderOutputsCachingStrategy, strategy_base.LatentsCachingStrategy)

    def answer(self, argv: list[str]) -> dict:
        for strategy in self.strategies:
            strategy._strategy = None
        self.captured.clear()
        sys.argv = ["train_network.py", *argv]  # read_config_from_file parses sys.argv again over the TOML
        args = self.parser.parse_args(argv)
        self.train_util.verify_command_line_training_args(args)
        args = self.train_util.read_config_from_file(args, self.parser)
        args.debug_dataset = True
        self.trainer.train(args)
        if not self.captured:
            return {"outcome": "error", "error": "train() returned before it built the dataset group", "where": ""}
        group = self.captured[0]
        n = len(group)
        buckets = [_buckets(d) for d in group.datasets]
        validation = [_buckets(d) for g in self.captured[1:] for d in g.datasets]
        out = {"outcome": "ok" if n else "no_data", "batches": n, "train_images": group.num_train_images,
               "reg_images": group.num_reg_images, "buckets": buckets, "validation_buckets": validation,
               "zero_buckets": [b for d in buckets + validation for b in d if b[0] < 1 or b[1] < 1]}
        if n:
            out.update(loop(args, n))
        return out


def main() -> None:
    cases_path, out_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.getcwd())
    trainer = Trainer()
    with open(cases_path) as fh:
        cases = json.load(fh)
    with open(out_path, "w") as out:
        for case in cases:
            try:
                result = trainer.answer(case["argv"])
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - every way sd-scripts stops is an answer
                frames = traceback.extract_tb(exc.__traceback__)
                where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].name}" if frames else ""
                result = {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"[:400], "where": where}
            out.write(json.dumps({**result, "id": case["id"]}) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
