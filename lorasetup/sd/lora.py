"""Verify a saved LoRA file without torch: header, finite tensors, ranks and alphas, training metadata.

sd-scripts saves a LoRA whose tensors are NaN without a word when the loss diverged, so a file that loads is not
a file that works. Used by the smoke gate (its 5-step LoRA), the watched long run (each checkpoint as it lands)
and `lorasetup checkpoints` (any run's folder). Tensors are read one at a time; nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.sd.facts import NETWORK_DEFAULTS
from lorasetup.sd.safetensors_header import Header, HeaderError, TensorInfo, nonfinite_count, read_header, tensor_values
from lorasetup.sd.trainargs import TrainArgs

LORA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
# network_args that give modules other ranks than network_dim (networks/lora.py create_network)
PER_BLOCK_ARGS = ("block_dims", "conv_block_dims", "block_alphas", "conv_block_alphas")
# train_network.py save_model: ss_steps / ss_epoch on every save; with --no_metadata only the minimum keys
# (library/train_util.py SS_METADATA_MINIMUM_KEYS) are written.
MINIMUM_METADATA = ("ss_network_module", "ss_network_dim", "ss_network_alpha")
TRAINING_METADATA = ("ss_steps", "ss_epoch", *MINIMUM_METADATA)
FLOAT_ALPHA_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class Expect:
    """What a LoRA should hold: from its run's training arguments, or (any folder) from its own metadata.
    `unet`/`text_encoder` None means not checked; `ranks_unchecked` says why ranks are not compared."""

    dim: int = NETWORK_DEFAULTS["network_dim"]
    alpha: float = NETWORK_DEFAULTS["network_alpha"]
    conv_dim: int | None = None
    conv_alpha: float = 1.0
    unet: bool | None = True
    text_encoder: bool | None = True
    ranks_unchecked: str | None = None
    required_metadata: tuple[str, ...] = TRAINING_METADATA
    dim_place: str = "--network_dim"
    alpha_place: str = "--network_alpha"


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def network_kwargs(args: TrainArgs) -> dict[str, str]:
    """`network_args` as sd-scripts splits them: `key=value` tokens."""
    raw = args.get("network_args") or []
    tokens = shlex.split(raw) if isinstance(raw, str) else [str(t) for t in raw]
    return dict(t.split("=", 1) for t in tokens if "=" in t)


def _ranks_unchecked(module: str, kwargs: dict[str, Any], dim_from_weights: bool) -> str | None:
    if module != "networks.lora" or dim_from_weights or any(k in kwargs for k in PER_BLOCK_ARGS):
        return f"ranks not compared: {module} with these network_args sets them per module"
    return None


def expect_from_args(args: TrainArgs) -> Expect:
    """What the run's own training arguments ask for."""
    kwargs = network_kwargs(args)
    module = str(args.get("network_module") or "networks.lora")
    alpha = _number(args.get("network_alpha"))
    return Expect(dim=int(_number(args.get("network_dim")) or NETWORK_DEFAULTS["network_dim"]),
                  alpha=NETWORK_DEFAULTS["network_alpha"] if alpha is None else alpha,
                  conv_dim=int(_number(kwargs.get("conv_dim")) or 0) or None,
                  conv_alpha=_number(kwargs.get("conv_alpha")) or 1.0,
                  unet=not args.on("network_train_text_encoder_only"),
                  text_encoder=not args.on("network_train_unet_only"),
                  ranks_unchecked=_ranks_unchecked(module, kwargs, args.on("dim_from_weights")),
                  required_metadata=MINIMUM_METADATA if args.on("no_metadata") else TRAINING_METADATA,
                  dim_place=args.place("network_dim"), alpha_place=args.place("network_alpha"))


def expect_from_metadata(metadata: dict[str, str]) -> Expect:
    """What a file's own `ss_*` metadata says was asked (for a folder whose training arguments are unknown)."""
    if not any(k.startswith("ss_") for k in metadata):
        return Expect(unet=None, text_encoder=None, required_metadata=(),
                      ranks_unchecked="ranks not compared: no training metadata says which rank was asked")
    try:
        kwargs = json.loads(metadata.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        kwargs = {}
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    module = metadata.get("ss_network_module") or "networks.lora"
    alpha = _number(metadata.get("ss_network_alpha"))
    return Expect(dim=int(_number(metadata.get("ss_network_dim")) or NETWORK_DEFAULTS["network_dim"]),
                  alpha=NETWORK_DEFAULTS["network_alpha"] if alpha is None else alpha,
                  conv_dim=int(_number(kwargs.get("conv_dim")) or 0) or None,
                  conv_alpha=_number(kwargs.get("conv_alpha")) or 1.0, unet=True, text_encoder=None,
                  ranks_unchecked=_ranks_unchecked(module, kwargs, False), required_metadata=(),
                  dim_place="its ss_network_dim", alpha_place="its ss_network_alpha")


@dataclass
class LoraReport:
    """The verdict on one LoRA file: `problems` make it broken; `facts` say what was verified."""

    path: Path
    size: int | None = None
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: int = 0
    nonfinite_tensors: int = 0
    unreadable: str | None = None  # HeaderError kind: truncated, corrupt, lfs-pointer, pickle, missing

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def step(self) -> int | None:
        value = _number(self.metadata.get("ss_steps"))
        return int(value) if value is not None else None

    @property
    def epoch(self) -> int | None:
        value = _number(self.metadata.get("ss_epoch"))
        return int(value) if value is not None else None

    def summary(self) -> str:
        """The training metadata in one line: step, epoch, network, rank, alpha, learning rate."""
        meta = self.metadata
        if not any(k.startswith("ss_") for k in meta):
            return "no training metadata"
        parts = [f"step {meta['ss_steps']}" if "ss_steps" in meta else "",
                 f"epoch {meta['ss_epoch']}" if "ss_epoch" in meta else "",
                 meta.get("ss_network_module", ""),
                 f"dim {meta['ss_network_dim']}" if "ss_network_dim" in meta else "",
                 f"alpha {meta['ss_network_alpha']}" if "ss_network_alpha" in meta else "",
                 f"lr {meta['ss_learning_rate']}" if "ss_learning_rate" in meta else ""]
        return ", ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        keys = ("ss_steps", "ss_epoch", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                "ss_learning_rate", "ss_output_name", "ss_base_model_version", "ss_training_finished_at")
        return {"path": str(self.path), "size_bytes": self.size, "ok": self.ok, "problems": self.problems,
                "facts": self.facts, "tensors": self.tensors, "nonfinite_tensors": self.nonfinite_tensors,
                "unreadable": self.unreadable, "metadata": {k: self.metadata[k] for k in keys if k in self.metadata}}


def _modules(header: Header) -> dict[str, dict[str, TensorInfo]]:
    """LoRA modules by name, each with its `down`, `up` and `alpha` tensors."""
    modules: dict[str, dict[str, TensorInfo]] = {}
    for name, info in header.tensors.items():
        for suffix, part in LORA_SUFFIXES.items():
            if name.endswith(suffix):
                modules.setdefault(name[:-len(suffix)], {})[part] = info
    return modules


def _check_layout(header: Header, report: LoraReport) -> None:
    """The header accounts for the whole file: safetensors allows no bytes after the last tensor."""
    end = max((info.end for info in header.tensors.values()), default=None)
    if end is not None and end < header.file_size:
        report.problems.append(f"{header.file_size - end} bytes after the last tensor: the file is damaged "
                               "(two writes mixed, or not written by safetensors)")


def _check_finite(header: Header, report: LoraReport) -> None:
    bad = {name: n for name, info in header.tensors.items() if (n := nonfinite_count(header.path, info))}
    report.nonfinite_tensors = len(bad)
    if bad:
        worst = sorted(bad.items(), key=lambda kv: -kv[1])[:3]
        report.problems.append(f"{len(bad)} of {len(header.tensors)} tensors hold NaN/inf ("
                               + ", ".join(f"{k}: {n}" for k, n in worst) + "): the LoRA would render black or noise")


def _check_coverage(modules: dict[str, dict[str, TensorInfo]], expect: Expect, report: LoraReport) -> None:
    unet = [m for m in modules if m.startswith("lora_unet_")]
    te = [m for m in modules if m.startswith("lora_te")]
    if expect.unet and not unet:
        report.problems.append("no lora_unet_ modules: the U-Net was not trained")
    if expect.text_encoder and not te:
        report.problems.append("no lora_te modules although the text encoder is trained "
                               "(network_train_unet_only is off)")
    state = "all finite" if not report.nonfinite_tensors else f"{report.nonfinite_tensors} not finite"
    report.facts.append(f"{report.path.name}: {report.tensors} tensors, {len(unet)} U-Net and {len(te)} "
                        f"text-encoder modules, {state}")


def _alpha_value(path: Path, info: TensorInfo | None) -> tuple[float, float] | None:
    """A module's alpha and the tolerance its dtype allows, when it is a float tensor."""
    if info is None or info.dtype not in FLOAT_ALPHA_DTYPES:
        return None
    return tensor_values(path, info)[0], 1e-6 if info.dtype in ("F32", "F64") else 1e-2


def _check_ranks(path: Path, modules: dict[str, dict[str, TensorInfo]], expect: Expect,
                 report: LoraReport) -> tuple[set[int], set[float], bool]:
    """Each module's rank against network_dim (conv_dim for 3x3 convolutions) and its alpha against
    network_alpha; returns the ranks and alphas found and whether every rank was as asked."""
    wrong_rank: list[str] = []
    wrong_alpha: list[str] = []
    ranks: set[int] = set()
    alphas: set[float] = set()
    for name, parts in sorted(modules.items()):
        down, up = parts.get("down"), parts.get("up")
        if down is None or up is None:
            report.problems.append(f"{name}: lora_down/lora_up pair incomplete")
            continue
        conv3 = len(down.shape) == 4 and tuple(down.shape[2:]) != (1, 1)
        want_rank, want_alpha = (expect.conv_dim, expect.conv_alpha) if conv3 else (expect.dim, expect.alpha)
        rank = down.shape[0]
        ranks.add(rank)
        if len(up.shape) < 2 or up.shape[1] != rank:
            report.problems.append(f"{name}: lora_up {list(up.shape)} does not match lora_down {list(down.shape)}")
        elif rank != want_rank:
            wrong_rank.append(f"{name}: rank {rank}")
        alpha = _alpha_value(path, parts.get("alpha"))
        if alpha is not None:
            alphas.add(alpha[0])
            if not math.isclose(alpha[0], want_alpha, rel_tol=alpha[1], abs_tol=alpha[1]):
                wrong_alpha.append(f"{name}: alpha {alpha[0]:g}")
    if wrong_rank:
        conv = f" / conv_dim = {expect.conv_dim}" if expect.conv_dim else ""
        report.problems.append(f"{len(wrong_rank)} modules have a rank other than network_dim = {expect.dim}{conv} "
                               f"({expect.dim_place}): " + ", ".join(wrong_rank[:3]))
    if wrong_alpha:
        report.problems.append(f"{len(wrong_alpha)} modules have an alpha other than network_alpha = "
                               f"{expect.alpha:g} ({expect.alpha_place}): " + ", ".join(wrong_alpha[:3]))
    return ranks, alphas, not wrong_rank


def _check_metadata(expect: Expect, report: LoraReport, ranks: tuple[set[int], bool] | None) -> None:
    """The training metadata is there and agrees with the tensors."""
    meta = report.metadata
    missing = [k for k in expect.required_metadata if k not in meta]
    if missing:
        report.problems.append(f"training metadata missing: {', '.join(missing)} (sd-scripts writes them on every "
                               "save; a file without them was not written by this run's save)")
    meta_dim, meta_alpha = meta.get("ss_network_dim"), meta.get("ss_network_alpha")
    if ranks is not None and meta_dim not in (None, "None") and _number(meta_dim) != expect.dim:
        found, as_asked = ranks
        report.problems.append(f"metadata ss_network_dim = {meta_dim} but the tensors have rank "
                               f"{expect.dim if as_asked else sorted(found)}")
    alpha = _number(meta_alpha)
    if ranks is not None and alpha is not None and not math.isclose(alpha, expect.alpha, rel_tol=1e-6):
        report.problems.append(f"metadata ss_network_alpha = {meta_alpha} but network_alpha = {expect.alpha:g}")


def _check_contents(header: Header, expect: Expect, report: LoraReport) -> None:
    _check_layout(header, report)
    _check_finite(header, report)
    modules = _modules(header)
    _check_coverage(modules, expect, report)
    ranks: tuple[set[int], bool] | None = None
    if expect.ranks_unchecked:
        report.facts.append(expect.ranks_unchecked)
    else:
        found, alphas, as_asked = _check_ranks(header.path, modules, expect, report)
        ranks = (found, as_asked)
        report.facts.append(f"ranks {sorted(found)}, alphas {sorted(alphas)}; ss_network_dim "
                            f"{report.metadata.get('ss_network_dim')}, ss_network_alpha "
                            f"{report.metadata.get('ss_network_alpha')}")
    _check_metadata(expect, report, ranks)


def verify_lora(path: Path, expect: Expect) -> LoraReport:
    """Everything that can be known about a LoRA file without loading it into torch."""
    report = LoraReport(path)
    try:
        report.size = path.stat().st_size
        header = read_header(path)
        report.metadata, report.tensors = header.metadata, len(header.tensors)
        _check_contents(header, expect, report)
    except HeaderError as exc:
        report.unreadable = exc.kind
        report.problems.append(f"{path.name}: {exc}")
    except OSError as exc:  # missing, or deleted / cut while being read (save_last_n_steps, a full disk)
        report.unreadable = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        report.problems.append(f"{path.name}: cannot be read ({exc.strerror or exc})")
    return report
