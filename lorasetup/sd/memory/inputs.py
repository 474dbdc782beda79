"""The memory estimate's inputs, read from one run's context: the checkpoint header (family and component
sizes), the training arguments (dtypes, what is trained and cached, the network, the optimizer, attention,
offloading) and the dataset's largest bucket. Nothing is loaded; every problem becomes a reason to skip."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lorasetup.engine.context import Context
from lorasetup.engine.result import CheckFailed
from lorasetup.sd import accelconfig
from lorasetup.sd.dataset.largest import ImpossibleSteps, LargestBucket, largest_bucket
from lorasetup.sd.dataset.schema import ConfigSyntaxError
from lorasetup.sd.lora import network_kwargs
from lorasetup.sd.memory.estimate import Estimate, Run, estimate
from lorasetup.sd.memory.parts import FLUX_FILES, ModelParts, component, model_parts
from lorasetup.sd.modelfamily import classify, classify_folder
from lorasetup.sd.safetensors_header import Header, HeaderError, TensorInfo, read_header
from lorasetup.sd.trainargs import TrainArgs, path_setting, train_args

BASE_MODEL_ARG = "pretrained_model_name_or_path"
# Entry scripts that train a LoRA, by the families they train (the estimate models these).
NETWORK_SCRIPTS = {"train_network.py": ("sd1", "sd2"), "sdxl_train_network.py": ("sdxl",),
                   "flux_train_network.py": ("flux",)}
# diffusers folder component -> our name
FOLDER_PARTS = {"unet": "unet", "transformer": "transformer", "text_encoder": "te1", "text_encoder_2": "te2",
                "vae": "vae"}
# LyCORIS algorithms whose modules hold more (or fewer) parameters than a LoRA of the same rank.
LYCORIS_FACTOR = {"loha": 2.0, "lokr": 0.25, "ia3": 0.02, "dylora": 1.0, "locon": 1.0, "lora": 1.0}


class NotEstimated(Exception):
    """The estimate cannot be made for this run; the message says why (the check skips with it)."""


@dataclass
class RunFacts:
    """The estimator's input and where its figures came from."""

    run: Run
    model: ModelParts
    bucket: LargestBucket | None
    notes: list[str] = field(default_factory=list)


def _header(ctx: Context, path: Path) -> Header:
    return ctx.memo(f"model.header:{path}", lambda: read_header(path))


def _folder_parts(path: Path, family: str) -> ModelParts:
    """Component sizes of a diffusers folder from each component's .safetensors headers."""
    parts = {}
    for folder, name in FOLDER_PARTS.items():
        files = sorted((path / folder).glob("*.safetensors"))
        if not files:
            continue
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            try:
                tensors.update(read_header(file).tensors)
            except (OSError, HeaderError, CheckFailed) as exc:
                raise NotEstimated(f"{file}: {exc} (see model.file)") from None
        parts[name] = component(tensors, "flux" if name == "transformer" else "unet" if name == "unet" else "clip")
    if "unet" not in parts and "transformer" not in parts:
        raise NotEstimated(f"{path} has no .safetensors weights in unet/ or transformer/ (.bin files are not read)")
    return ModelParts(family, parts, 0)


def base_model_parts(ctx: Context, args: TrainArgs) -> ModelParts:
    """The base model's family and component sizes; raises NotEstimated with the reason."""
    path = path_setting(ctx, "base_model", BASE_MODEL_ARG)
    if path is None or not path.exists():
        raise NotEstimated("no local base model (see model.file)")
    if path.is_dir():
        family = classify_folder(path).name
        if family not in ("sd1", "sd2", "sdxl", "flux"):
            raise NotEstimated(f"the family of {path.name} is {family or 'unknown'}: the estimate models SD1.x, "
                               "SD2.x, SDXL and FLUX.1")
        return _folder_parts(path, family)
    if path.suffix.lower() != ".safetensors":
        raise NotEstimated(f"{path.name} is not a .safetensors file: its header is not read (see model.file)")
    try:
        header = _header(ctx, path)
    except (OSError, HeaderError, CheckFailed) as exc:  # a pipe, a device, a damaged or truncated header
        raise NotEstimated(f"{path.name}: {exc} (see model.file)") from None
    found = classify({name: info.shape for name, info in header.tensors.items()})
    if found.name not in ("sd1", "sd2", "sdxl", "flux"):
        raise NotEstimated(f"the family of {path.name} is {found.name or 'unknown'} ({found.evidence}): the "
                           "estimate models SD1.x, SD2.x, SDXL and FLUX.1")
    flux_files = {arg: _flux_path(args, arg) for arg in FLUX_FILES} if found.name == "flux" else None
    return model_parts(header.tensors, found.name, header.file_size, flux_files)


def _flux_path(args: TrainArgs, arg: str) -> Path | None:
    raw = args.get(arg)
    path = Path(str(raw)).expanduser() if isinstance(raw, str) and raw else None
    return path if path is not None and path.is_file() else None


def _int(args: TrainArgs, name: str, default: int, notes: list[str]) -> int:
    """An integer option as argparse would convert it; the default (with a note) when it is not a number."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError
        return int(float(raw))
    except (TypeError, ValueError):
        notes.append(f"{args.place(name)} = {raw!r} is not a number; counted as {default}")
        return default


def attention(args: TrainArgs) -> str:
    """The U-Net attention sd-scripts installs (train_util.replace_unet_modules): xformers, mem_eff, sdpa or the
    plain softmax(QK^T)V."""
    for flag, kind in (("xformers", "xformers"), ("mem_eff_attn", "mem_eff"), ("sdpa", "sdpa")):
        if args.on(flag):
            return kind
    return "plain"


def optimizer(args: TrainArgs) -> str:
    """The optimizer get_optimizer builds (library/train_util.py): --use_8bit_adam wins over --optimizer_type."""
    if args.on("use_8bit_adam"):
        return "AdamW8bit"
    return str(args.get("optimizer_type") or "AdamW")


def network_factor(args: TrainArgs, notes: list[str]) -> float:
    """How many parameters the network module holds relative to a LoRA of the same rank."""
    module = str(args.get("network_module") or "networks.lora")
    if module.startswith("lycoris"):
        algo = network_kwargs(args).get("algo", "lora").lower()
        if algo not in LYCORIS_FACTOR:
            notes.append(f"LyCORIS algo {algo}: counted as a LoRA of the same rank")
        return LYCORIS_FACTOR.get(algo, 1.0)
    if not module.startswith("networks."):
        notes.append(f"network_module {module}: counted as a LoRA of the same rank")
    return 1.0


def _token_chunks(args: TrainArgs, notes: list[str]) -> int:
    length = _int(args, "max_token_length", 75, notes)
    return max(1, min(3, length // 75))


def run_settings(args: TrainArgs, family: str, notes: list[str]) -> dict[str, Any]:
    """The Run fields that come from the training arguments alone."""
    kwargs = network_kwargs(args)
    mp, _ = accelconfig.effective_mixed_precision(args)
    return {
        "mixed_precision": mp, "full_half": args.on("full_fp16") or args.on("full_bf16"),
        "fp8_base": args.on("fp8_base"), "fp8_base_unet": args.on("fp8_base_unet"),
        "no_half_vae": args.on("no_half_vae"),
        "train_unet": not args.on("network_train_text_encoder_only"),
        "train_te": not args.on("network_train_unet_only"),
        "cache_latents": args.on("cache_latents") or args.on("cache_latents_to_disk"),
        "cache_to_disk": args.on("cache_latents_to_disk"),
        "cache_te": args.on("cache_text_encoder_outputs") or args.on("cache_text_encoder_outputs_to_disk"),
        "gradient_checkpointing": args.on("gradient_checkpointing"),
        "attention": "sdpa" if family == "flux" else attention(args),
        "network_dim": _int(args, "network_dim", 4, notes),
        "conv_dim": int(float(kwargs["conv_dim"])) if kwargs.get("conv_dim", "").replace(".", "", 1).isdigit() else 0,
        "network_factor": network_factor(args, notes), "optimizer": optimizer(args),
        "blocks_to_swap": _int(args, "blocks_to_swap", 0, notes),
        "lowram": args.on("lowram"), "highvram": args.on("highvram"),
        "token_chunks": _token_chunks(args, notes),
        "t5_tokens": _int(args, "t5xxl_max_token_length", 512, notes),
    }


def _bucket(ctx: Context) -> LargestBucket:
    try:
        bucket = largest_bucket(ctx)
    except (ImpossibleSteps, ConfigSyntaxError, CheckFailed) as exc:
        raise NotEstimated(f"the dataset's buckets cannot be computed ({exc}); see the dataset gate") from None
    if bucket is None:
        raise NotEstimated("the dataset has no image with a readable size (see dataset.images)")
    return bucket


def run_facts(ctx: Context, device: str = "cpu") -> RunFacts:
    """Everything the estimate needs for this run on `device` (`on_device` changes it later, so a caller can
    learn whether an estimate is possible before asking the probe for the device); raises NotEstimated."""
    script = Path(ctx.target.script).name
    if script not in NETWORK_SCRIPTS:
        raise NotEstimated(f"{script}: the estimate models LoRA training with "
                           f"{', '.join(NETWORK_SCRIPTS)}")
    try:
        args = train_args(ctx)
    except CheckFailed as exc:
        raise NotEstimated(f"the training arguments cannot be read: {exc.summary}") from None
    model = base_model_parts(ctx, args)
    if model.family not in NETWORK_SCRIPTS[script]:
        raise NotEstimated(f"{script} does not train a {model.family} model (see model.family)")
    bucket = _bucket(ctx)
    notes = list(model.notes)
    width, height = bucket.resolution
    run = Run(model.family, model.components, device, bucket.batch_size, width, height,
              file_bytes=model.file_bytes, cached_samples=bucket.samples, **run_settings(args, model.family, notes))
    return RunFacts(run, model, bucket, notes)


def on_device(facts: RunFacts, device: str) -> RunFacts:
    return replace(facts, run=replace(facts.run, device=device))


def estimate_for_target(ctx: Context, device: str) -> Estimate:
    """The estimate for this run on `device` (raises NotEstimated)."""
    return estimate(run_facts(ctx, device).run)
