"""A test fixture standing in for sd-scripts' train_network.py (a real SD checkpoint cannot exist in tests).

It honours the sd-scripts command-line subset lorasetup passes (`--config_file` merged as sd-scripts does:
sections flattened, the command line wins; `--dataset_config`; `--max_train_steps`/`--max_train_epochs`;
`--output_dir`, `--output_name`, `--network_dim`, `--network_alpha`, `--network_args`, `--learning_rate`,
`--save_every_n_steps`, `--save_state`, `--resume`, ...), really trains a tiny LoRA with torch on the dataset's
images and captions, prints its progress exactly in sd-scripts' format and order (Rich log records at 80
columns, the tqdm `steps` bar updated before a save and given the step's `avr_loss=` after it, `saving
checkpoint: <file>` lines) and saves .safetensors files with sd-scripts' key names and `ss_*` metadata, with
--save_state a `<name>-step00000010-state` folder (train_state.json and the optimizer's state) beside each.

The test picks a behaviour with FIXTURE_TRAINER_MODE:
  good            train and save
  nan             the loss is NaN from step 2 (the run carries on and saves, as sd-scripts does)
  traceback       an exception at step 1 (exit 1)
  traceback-hang  a traceback is printed at step 1, then the process hangs
  hang            hangs after step 1
  nodata          logs "No data found" and exits 0
  nonfinite-save  trains well but saves tensors holding NaN
  wrong-rank      saves LoRA modules of twice the rank asked for
and, for long runs, with step numbers (each overrides the mode's own step):
  FIXTURE_TRAINER_NAN_FROM=j     the loss is NaN from step j on (so are the weights, and the saves after it)
  FIXTURE_TRAINER_STALL_AT=j     hangs after step j
  FIXTURE_TRAINER_CRASH_AT=j     an exception at step j (exit 1)
  FIXTURE_TRAINER_CORRUPT_AT=j   the checkpoint saved at step j is cut short (as by a full disk or a kill)
  FIXTURE_TRAINER_NAN_SAVE_AT=j  the checkpoint saved at step j holds NaN although the loss stays finite
  FIXTURE_TRAINER_LOAD_S=x       "loads" silently for x seconds before the steps bar appears
  FIXTURE_TRAINER_WORKER=1       starts a worker process (like a DataLoader worker) that outlives nothing
FIXTURE_TRAINER_STEP_S sets the seconds each step takes at least (default 0.2); FIXTURE_TRAINER_ARGS names
a file that receives the parsed arguments (and the pids of the trainer and its worker) as JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import tomllib

if os.environ.get("FIXTURE_TRAINER_ARGS"):  # the pid first: a test may stop the run while torch still imports
    Path(os.environ["FIXTURE_TRAINER_ARGS"]).write_text(json.dumps({"pid": os.getpid(), "worker_pid": None}))

import torch  # noqa: E402 - after the early pid record
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

MODE = os.environ.get("FIXTURE_TRAINER_MODE", "good")
STEP_S = float(os.environ.get("FIXTURE_TRAINER_STEP_S", "0.2"))
NEVER = 10**9


def at_step(name: str, mode_default: dict[str, int]) -> int:
    """The step a long-run behaviour starts at: its variable, else the mode's own step, else never."""
    value = os.environ.get(f"FIXTURE_TRAINER_{name}")
    return int(value) if value else mode_default.get(MODE, NEVER)


NAN_FROM = at_step("NAN_FROM", {"nan": 2})
STALL_AT = at_step("STALL_AT", {"hang": 1})
CRASH_AT = at_step("CRASH_AT", {"traceback": 1, "traceback-hang": 1})
CORRUPT_AT = at_step("CORRUPT_AT", {})
NAN_SAVE_AT = at_step("NAN_SAVE_AT", {})
LOAD_S = float(os.environ.get("FIXTURE_TRAINER_LOAD_S", "0"))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TE_MODULES = ("lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_te_text_model_encoder_layers_0_mlp_fc2")
UNET_MODULES = ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_mid_block_attentions_0_proj_out",
                "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q")
WIDTH = 16
_last_time = [""]


def log(level: str, message: str, source: str) -> None:
    """One log record laid out as Rich's handler does on an 80-column non-terminal (library/utils.py)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    shown, _last_time[0] = (" " * len(stamp) if stamp == _last_time[0] else stamp), stamp
    width = 80 - len(stamp) - 1 - 9 - len(source) - 1
    lines = textwrap.wrap(message, width) or [""]
    out = [f"{shown} {level:<8} {lines[0]:<{width}} {source}"]
    out += [" " * (len(stamp) + 10) + f"{line:<{width}}" + " " * (len(source) + 1) for line in lines[1:]]
    print("\n".join(out), file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--config_file", type=str)
    p.add_argument("--dataset_config", type=str)
    p.add_argument("--pretrained_model_name_or_path", type=str)
    p.add_argument("--tokenizer_cache_dir", type=str)
    p.add_argument("--output_dir", type=str)
    p.add_argument("--output_name", type=str)
    p.add_argument("--save_model_as", type=str, default="safetensors", choices=["safetensors", "ckpt", "pt"])
    p.add_argument("--logging_dir", type=str)
    p.add_argument("--log_with", type=str)
    p.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--optimizer_type", type=str, default="")
    p.add_argument("--learning_rate", type=float, default=2e-6)
    p.add_argument("--max_train_steps", type=int, default=1600)
    p.add_argument("--max_train_epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--network_module", type=str)
    p.add_argument("--network_dim", type=int)
    p.add_argument("--network_alpha", type=float, default=1)
    p.add_argument("--network_args", type=str, nargs="*")
    p.add_argument("--network_train_unet_only", action="store_true")
    p.add_argument("--network_train_text_encoder_only", action="store_true")
    p.add_argument("--cache_latents", action="store_true")
    p.add_argument("--sdpa", action="store_true")
    p.add_argument("--save_every_n_epochs", type=int)
    p.add_argument("--save_every_n_steps", type=int)
    p.add_argument("--save_state", action="store_true")
    p.add_argument("--save_state_on_train_end", action="store_true")
    p.add_argument("--resume", type=str)
    p.add_argument("--sample_every_n_steps", type=int)
    p.add_argument("--sample_every_n_epochs", type=int)
    p.add_argument("--sample_at_first", action="store_true")
    p.add_argument("--sample_prompts", type=str)
    p.add_argument("--huggingface_repo_id", type=str)
    args = p.parse_args()
    if args.config_file:  # library/train_util.py read_config_from_file: sections flattened, command line wins
        path = args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
        log("INFO", f"Loading settings from {path}...", "train_util.py:4744")
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        flat = {}
        for key, value in data.items():
            flat.update(value if isinstance(value, dict) else {key: value})
        args = p.parse_args(namespace=argparse.Namespace(**flat))
    return args


def load_dataset(path: str | None) -> list[tuple[torch.Tensor, str]]:
    """Images (as 16 grey levels of a 4x4 thumbnail) with their captions, times num_repeats."""
    if not path:
        return []
    log("INFO", f"Loading dataset config from {path}", "train_network.py:519")
    with open(path, "rb") as fh:
        config = tomllib.load(fh)
    general = config.get("general", {})
    items = []
    for dataset in config.get("datasets", []):
        for subset in dataset.get("subsets", []):
            ext = subset.get("caption_extension", general.get("caption_extension", ".caption"))
            folder = Path(subset["image_dir"])
            images = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_EXTENSIONS) if folder.is_dir() else []
            log("INFO", f"found directory {folder} contains {len(images)} image files", "train_util.py:2059")
            for image in images:
                grey = Image.open(image).convert("L").resize((4, 4))
                pixels = torch.tensor(list(grey.tobytes()), dtype=torch.float32) / 255.0
                caption_file = image.with_suffix(ext)
                caption = caption_file.read_text().strip() if caption_file.is_file() else ""
                items += [(pixels, caption)] * int(subset.get("num_repeats", 1))
    return items


class LoRA(torch.nn.Module):
    """A frozen linear layer with a LoRA on top: base(x) + up(down(x)) * alpha / rank."""

    def __init__(self, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = torch.nn.Linear(WIDTH, WIDTH)
        self.base.requires_grad_(False)
        self.down = torch.nn.Linear(WIDTH, rank, bias=False)
        self.up = torch.nn.Linear(rank, WIDTH, bias=False)
        torch.nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def caption_vector(caption: str) -> torch.Tensor:
    vec = torch.zeros(WIDTH)
    for i, ch in enumerate(caption.encode()):
        vec[(i + ch) % WIDTH] += 1.0 / (1 + len(caption))
    return vec


def start(args: argparse.Namespace) -> None:
    """Record the arguments and pids, and start the worker process when asked."""
    record = {**vars(args), "pid": os.getpid(), "cwd": os.getcwd(), "worker_pid": None}
    if os.environ.get("FIXTURE_TRAINER_WORKER"):
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        record["worker_pid"] = worker.pid
    if os.environ.get("FIXTURE_TRAINER_ARGS"):
        Path(os.environ["FIXTURE_TRAINER_ARGS"]).write_text(json.dumps(record, default=str))
    if args.resume:
        log("INFO", f"resume training from local state: {args.resume}", "train_util.py:4777")
    time.sleep(LOAD_S)


def crash(step: int) -> None:
    try:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fixture)")
    except torch.OutOfMemoryError:
        if MODE != "traceback-hang":
            raise
        traceback.print_exc()
        time.sleep(3600)


def train_step(modules: dict[str, LoRA], optimizer: torch.optim.Optimizer, item: tuple[torch.Tensor, str],
               step: int) -> float:
    pixels, caption = item
    hidden = caption_vector(caption)
    for te in TE_MODULES:
        if te in modules:
            hidden = modules[te](hidden)
    x = pixels + 0.1 * torch.randn(WIDTH) + hidden
    for unet in UNET_MODULES:
        x = modules[unet](x)
    loss = torch.nn.functional.mse_loss(x, pixels)
    if step >= NAN_FROM:
        loss = loss * float("nan")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def resumed_epochs(args: argparse.Namespace, steps_per_epoch: int) -> int:
    """The epochs a --resume'd run skips (train_network.py without --skip_until_initial_step): the state's step
    // steps per epoch; its bar still shows max_train_steps and global_step counts from 0 again."""
    if not args.resume:
        return 0
    state = json.loads((Path(args.resume) / "train_state.json").read_text())
    log("INFO", f"load train state from {args.resume}/train_state.json: {state}", "train_network.py:969")
    return state["current_step"] // steps_per_epoch


def network(args: argparse.Namespace) -> tuple[dict[str, LoRA], torch.optim.Optimizer]:
    print("accelerator device: cpu", flush=True)
    rank = args.network_dim or 4
    saved_rank = rank * 2 if MODE == "wrong-rank" else rank
    train_te = not args.network_train_unet_only
    modules = {name: LoRA(saved_rank, args.network_alpha)
               for name in (TE_MODULES if train_te else ()) + UNET_MODULES}
    log("INFO", f"create LoRA network. base dim (rank): {rank}, alpha: {args.network_alpha}", "lora.py:935")
    params = [p for m in modules.values() for p in (m.down.weight, m.up.weight)]
    return modules, torch.optim.AdamW(params, lr=args.learning_rate)


def main() -> int:
    args = parse_args()
    start(args)
    torch.manual_seed(args.seed or 0)
    items = load_dataset(args.dataset_config)
    if MODE == "nodata" or not items:
        log("ERROR", "No data found. Please verify arguments (train_data_dir must be the parent of folders with "
                     "images) / 画像がありません。引数指定を確認してください", "train_network.py:576")
        return 0
    modules, optimizer = network(args)
    steps_per_epoch = len(items)
    if args.max_train_epochs:
        args.max_train_steps = args.max_train_epochs * steps_per_epoch
        print(f"override steps. steps for {args.max_train_epochs} epochs is: {args.max_train_steps}", flush=True)
    print("running training / 学習開始", flush=True)
    print(f"  total optimization steps / 学習ステップ数: {args.max_train_steps}", flush=True)
    skipped = resumed_epochs(args, steps_per_epoch)
    train(args, modules, optimizer, items, skipped)
    log("INFO", "model saved.", "train_network.py:1729")
    return 0


def train(args: argparse.Namespace, modules: dict[str, LoRA], optimizer: torch.optim.Optimizer,
          items: list[tuple[torch.Tensor, str]], skipped: int) -> None:
    """The steps in sd-scripts' order: the bar moves, the save (and state), then the step's avr_loss."""
    per_epoch = len(items)
    progress = tqdm(range(args.max_train_steps), smoothing=0, desc="steps")
    losses: list[float] = []
    out_dir = Path(args.output_dir or ".")
    name = args.output_name or "last"
    last = args.max_train_steps - skipped * per_epoch
    for step in range(1, last + 1):
        epoch = skipped + (step - 1) // per_epoch + 1
        if step == 1 or (step - 1) % per_epoch == 0:
            print(f"\nepoch {epoch}/{math.ceil(args.max_train_steps / per_epoch)}", flush=True)
        began = time.monotonic()
        losses.append(train_step(modules, optimizer, items[(step - 1) % len(items)], step))
        if step >= CRASH_AT:
            crash(step)
        time.sleep(max(0.0, STEP_S - (time.monotonic() - began)))
        progress.update(1)
        if args.save_every_n_steps and step % args.save_every_n_steps == 0:
            save(modules, out_dir / f"{name}-step{step:08d}.safetensors", args, step, epoch)
            if args.save_state:
                save_state(optimizer, out_dir / f"{name}-step{step:08d}-state", step, epoch)
        progress.set_postfix(avr_loss=sum(losses) / len(losses))
        if step >= STALL_AT:
            time.sleep(3600)
    if args.save_state or args.save_state_on_train_end:
        save_state(optimizer, out_dir / f"{name}-state", last, epoch)
    save(modules, out_dir / f"{name}.safetensors", args, last, epoch)


def save(modules: dict[str, LoRA], path: Path, args: argparse.Namespace, step: int, epoch: int) -> None:
    """sd-scripts' key names (`<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`) and ss_* metadata."""
    tensors = {}
    for name, module in modules.items():
        tensors[f"{name}.lora_down.weight"] = module.down.weight.detach().clone()
        tensors[f"{name}.lora_up.weight"] = module.up.weight.detach().clone()
        tensors[f"{name}.alpha"] = torch.tensor(module.alpha)
    if MODE == "nonfinite-save" or step == NAN_SAVE_AT:
        first = next(iter(modules))
        tensors[f"{first}.lora_up.weight"][0, 0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\nsaving checkpoint: {path}", flush=True)
    metadata = {"ss_network_dim": str(args.network_dim), "ss_network_alpha": str(args.network_alpha),
                "ss_network_module": str(args.network_module), "ss_steps": str(step), "ss_epoch": str(epoch),
                "ss_output_name": str(args.output_name), "ss_learning_rate": str(args.learning_rate)}
    save_file(tensors, str(path), metadata=metadata)
    if step == CORRUPT_AT:
        os.truncate(path, path.stat().st_size // 2)


def save_state(optimizer: torch.optim.Optimizer, folder: Path, step: int, epoch: int) -> None:
    """What accelerate's save_state leaves (train_network.py save_model_hook adds train_state.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), folder / "optimizer.bin")
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))


if __name__ == "__main__":
    sys.exit(main())
