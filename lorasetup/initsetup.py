"""What `lorasetup init` writes into lorasetup.toml: the checkout, interpreter, device, base model, entry script
and training arguments, each with where it came from (a flag, the environment, a config file, or found here).

Front end: it reads the base model through the model gate's `checks` module (family from the header, never the
weights) and asks the training interpreter for its device through the one stack probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.checks.model.checks import FAMILY_SCRIPT, PICKLE_SUFFIXES
from lorasetup.engine import tomltext
from lorasetup.engine.context import Context
from lorasetup.engine.files import resolved
from lorasetup.engine.probe import ProbeError
from lorasetup.engine.target import Target, discover_root, venv_python
from lorasetup.sd import stackprobe
from lorasetup.sd.dataset.layout import Finding
from lorasetup.sd.devices import machine_offers
from lorasetup.sd.modelfamily import FAMILY_LABELS, Family, classify, classify_folder
from lorasetup.sd.run.command import option_names, strip_options
from lorasetup.sd.safetensors_header import HeaderError, read_header

# Where base models usually sit, besides the dataset folder ({dir}) and the checkout ({root}).
MODEL_PLACES = ("{dir}", "{dir}/models", "{dir}/..", "{dir}/../models", "{root}/models", "~/models",
                "~/stable-diffusion-webui/models/Stable-diffusion", "~/ComfyUI/models/checkpoints")
MAX_MODEL_FILES = 40  # headers read while looking for a base model
# The LoRA module each family's entry script expects (sd-scripts networks/lora*.py).
NETWORK_MODULE = {"flux": "networks.lora_flux", "sd3": "networks.lora_sd3"}
# Precision and optimizer per device. On MPS these are the seed's locked flags: fp16 there gives NaN losses,
# AdamW8bit has no MPS build, and the half-precision VAE renders black.
DEVICE_ARGS = {"mps": ["--no_half_vae", "--mixed_precision=no", "--optimizer_type=AdamW"],
               "cpu": ["--mixed_precision=no", "--optimizer_type=AdamW"],
               "xpu": ["--mixed_precision=bf16", "--optimizer_type=AdamW"],
               "auto": ["--mixed_precision=no", "--optimizer_type=AdamW"]}
LORA_ARGS = ["--network_dim=32", "--network_alpha=16", "--learning_rate=1e-4"]
# Extra model files these families need; sd-scripts stops at start without them.
FAMILY_FILES = {"flux": "--clip_l, --t5xxl and --ae", "sd3": "--clip_l, --clip_g and --t5xxl"}


@dataclass
class Setup:
    """The values for lorasetup.toml with their sources; `findings` say what was not found or looks wrong."""

    target: Target
    sources: dict[str, str] = field(default_factory=dict)
    family: str | None = None
    v_prediction: bool | None = None  # known for diffusers folders only
    cuda_bf16: bool = False
    device_facts: str = ""
    findings: list[Finding] = field(default_factory=list)

    def warn(self, where: str, text: str, fix: str | None = None) -> None:
        self.findings.append(Finding("warn", where, text, fix))


def source_label(target: Target, name: str) -> str | None:
    """How the person set a field: `--base-model`, `LORASETUP_DEVICE`, a config file; None when not set."""
    origin = target.sources.get(name)
    if origin in (None, "discovered", "current interpreter"):
        return None
    return f"--{name.replace('_', '-')}" if origin == "flag" else origin


def discover(target: Target, data_dir: Path) -> Setup:
    """Fill in what the person did not set: checkout, venv, base model and family, script, device."""
    setup = Setup(target)
    for name in ("kohya_root", "python", "base_model", "script", "device", "output_dir", "train_config",
                 "accelerate_config", "launch_args", "rendezvous_timeout"):
        label = source_label(target, name)
        if label:
            setup.sources[name] = label
    _find_root(setup, data_dir)
    _find_model(setup, data_dir)
    _choose_script(setup)
    _choose_device(setup)
    return setup


def _find_root(setup: Setup, data_dir: Path) -> None:
    target = setup.target
    if target.kohya_root is None:  # also beside the dataset folder: ~/lora/spyke next to ~/lora/kohya_ss
        for candidate in (data_dir.parent / "kohya_ss", data_dir.parent / "sd-scripts"):
            found = discover_root(candidate) if candidate.is_dir() else None
            if found is not None:
                target.kohya_root = found
                break
    if target.kohya_root is None:
        setup.warn("kohya_root", "no kohya_ss or sd-scripts checkout found (looked in and above the folder, beside "
                   "it, ~/kohya_ss and ~/tools/kohya_ss)", "pass --kohya-root /path/to/kohya_ss")
        return
    setup.sources.setdefault("kohya_root", "found")
    if "python" not in setup.sources:
        venv = venv_python(target.kohya_root) or (venv_python(target.kohya_root / "sd-scripts")
                                                  if target.layout == "kohya_ss" else None)
        if venv is not None:
            target.python = venv
            setup.sources["python"] = "found"
        else:
            setup.warn("python", f"no venv in {target.kohya_root}: the checks would ask lorasetup's own Python",
                       "pass --python /path/to/venv/bin/python (the interpreter that runs the training)")


def model_family(path: Path) -> tuple[Family | None, str]:
    """The family of a base model from its header or diffusers files (a trainable base model only), and the
    evidence or why it is not known."""
    if path.is_dir():
        family = classify_folder(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        return None, f"{path.name} is a pickle: its family is not read (lorasetup never unpickles)"
    else:
        try:
            header = read_header(path)
        except (HeaderError, OSError) as exc:
            return None, f"{path.name}: {exc}"
        family = classify({name: info.shape for name, info in header.tensors.items()})
    if family.in_channels not in (None, 4):
        return None, f"{path.name} has {family.in_channels} input channels (an inpainting model)"
    if family.name not in FAMILY_SCRIPT:
        label = FAMILY_LABELS.get(family.name or "", "not a known base model")
        return None, f"{path.name}: {label} ({family.evidence})"
    return family, family.evidence


def _model_candidates(data_dir: Path, root: Path | None) -> list[Path]:
    found: list[Path] = []
    for place in MODEL_PLACES:
        if "{root}" in place and root is None:
            continue
        folder = resolved(Path(place.format(dir=data_dir, root=root)).expanduser())
        try:
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue
        found += [p for p in entries if p.suffix == ".safetensors" and p.is_file()
                  or p.is_dir() and (p / "model_index.json").is_file()]
    return list(dict.fromkeys(found))[:MAX_MODEL_FILES]


def _find_model(setup: Setup, data_dir: Path) -> None:
    target = setup.target
    if target.base_model is not None:
        if not target.base_model.exists():
            setup.warn("base_model", f"{target.base_model} does not exist")
            return
        family, evidence = model_family(target.base_model)
        if family is None:
            setup.warn("base_model", f"cannot tell which base model family this is: {evidence}",
                       "check that it is a base checkpoint (not a LoRA); lorasetup assumes SD1.x")
        else:
            setup.family, setup.v_prediction = family.name, family.v_prediction
        return
    models = []
    for path in _model_candidates(data_dir, target.kohya_root):
        family, _ = model_family(path)
        if family is not None:
            models.append((path, family))
    if len(models) == 1:
        target.base_model, found = models[0]
        setup.family, setup.v_prediction = found.name, found.v_prediction
        setup.sources["base_model"] = "found"
        return
    listed = "; ".join(f"{p} ({FAMILY_LABELS[f.name or '']})" for p, f in models[:5])
    setup.warn("base_model", f"{len(models)} base models found: {listed}" if models else
               "no base model found (looked beside the folder, in ~/models and the usual web UI folders)",
               "pass --base-model /path/to/model.safetensors")


def _choose_script(setup: Setup) -> None:
    target = setup.target
    if "script" in setup.sources:
        return
    target.script = FAMILY_SCRIPT.get(setup.family or "", "train_network.py")
    setup.sources["script"] = f"for {FAMILY_LABELS[setup.family]}" if setup.family else "default"
    sd_scripts = target.sd_scripts
    if sd_scripts is not None and sd_scripts.is_dir() and not (sd_scripts / target.script).is_file():
        setup.warn("script", f"this checkout has no {target.script}", "update the checkout, or pass --script")
    if setup.family == "sd2" and setup.v_prediction is None:
        setup.warn("train_args", "a single-file SD2.x model does not say whether it is a 768-v model",
                   "if it is (e.g. v2-1_768), add `-- --v_parameterization` and --resolution 768")
    if setup.family in FAMILY_FILES:
        setup.warn("train_args", f"{FAMILY_LABELS[setup.family]} also needs {FAMILY_FILES[setup.family]}",
                   "add them after `--`: lorasetup init DIR -- --clip_l /path/clip_l.safetensors ...")


def _choose_device(setup: Setup) -> None:
    """The device the person named, else the best this machine offers (asked of the training interpreter)."""
    target = setup.target
    if "device" in setup.sources and target.device not in ("auto", "cuda"):
        return
    with Context(target) as ctx:
        ctx.planned = set()  # torch and accelerate only: no deep imports of the training script
        try:
            found = stackprobe.facts(ctx)
        except ProbeError as exc:
            setup.warn("device", f"the training interpreter could not be asked which device it has: "
                       f"{str(exc).splitlines()[0]}", "pass --device mps|cuda|cpu")
            return
    torch = found.torch
    setup.cuda_bf16 = bool(torch and torch.cuda_bf16)
    setup.device_facts = (f"torch {torch.version}, {torch.build_label()}" if torch
                          else f"torch not importable: {found.torch_error}")
    if "device" not in setup.sources or target.device == "auto":
        target.device = machine_offers(found)
        setup.sources["device"] = "what this machine offers"


def train_args(setup: Setup, total_steps: int, saves: int, extra: list[str]) -> list[str]:
    """LoRA arguments for the family and the device, the step count and save interval, then the person's own
    arguments (after `--`), which replace any of ours with the same name."""
    device = setup.target.device
    if device == "cuda":
        precision = ["--mixed_precision=bf16" if setup.cuda_bf16 else "--mixed_precision=fp16"]
        device_args = precision + ["--optimizer_type=AdamW"]
        if setup.family == "sdxl" and not setup.cuda_bf16:
            device_args.insert(0, "--no_half_vae")  # SDXL's VAE overflows in fp16
    else:
        device_args = DEVICE_ARGS.get(device, DEVICE_ARGS["auto"])
    ours = [f"--network_module={NETWORK_MODULE.get(setup.family or '', 'networks.lora')}", *device_args,
            *LORA_ARGS, f"--max_train_steps={total_steps}"]
    if setup.family == "sd2":  # train_network.py builds an SD1 model without it (see the model.family check)
        ours[1:1] = ["--v2"] + (["--v_parameterization"] if setup.v_prediction else [])
    every = save_interval(total_steps, saves)
    if every is not None:
        ours.append(f"--save_every_n_steps={every}")
    return strip_options(ours, set(option_names(extra))) + list(extra)


def save_interval(total: int, saves: int) -> int | None:
    """Steps between saves so that `saves` files are written, the last at the end; None for one save."""
    every = math.ceil(total / saves)
    return every if saves > 1 and every < total else None


def render_config(setup: Setup, dataset_name: str, args: list[str], header: list[str]) -> str:
    """lorasetup.toml: each setting with where it came from; what was not found is a commented line to fill in."""
    t = setup.target
    lines = [tomltext.comment(line) for line in header] + [""]
    python = t.python if "python" in setup.sources else None
    rows: list[tuple[str, Any, str]] = [
        ("kohya_root", t.kohya_root, "kohya_ss GUI checkout or a bare sd-scripts checkout"),
        ("python", python, "the training venv's interpreter"),
        ("script", t.script, ""), ("device", t.device, setup.device_facts),
        ("dataset_config", dataset_name, "written beside this file"), ("base_model", t.base_model, ""),
        ("output_dir", t.output_dir or "output", "relative to this file"),
        ("train_config", t.train_config, ""), ("accelerate_config", t.accelerate_config, ""),
        ("launch_args", t.launch_args or None, ""),
        ("rendezvous_timeout", t.rendezvous_timeout if "rendezvous_timeout" in setup.sources else None, ""),
    ]
    for key, item, note in rows:
        source = setup.sources.get(key)
        why = "; ".join(x for x in (source, note) if x)
        if item is None:
            if key in ("kohya_root", "python", "base_model"):
                lines.append(f"# {key} = '...'  {tomltext.comment('not found: set it')}")
            continue
        text = tomltext.path_string(str(item)) if isinstance(item, Path) or key == "output_dir" \
            else tomltext.value(item)
        lines.append(f"{key} = {text}" + (f"  {tomltext.comment(why)}" if why else ""))
    lines.append("train_args = [")
    lines += [f"  {tomltext.basic_string(arg)}," for arg in args]
    lines.append("]")
    return "\n".join(lines) + "\n"
