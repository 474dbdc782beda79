"""How much memory a LoRA training run needs: pure arithmetic over what the run asks and what the checkpoint's
header says. Nothing is loaded or run.

The model (each figure in bytes):
- weights: the parameter count of each component (read from the header, lorasetup.sd.memory.parts) times the
  bytes of the dtype sd-scripts gives it on the device (train_network.py: the frozen U-Net/DiT and the text
  encoders in the mixed-precision dtype, fp8 with --fp8_base; the VAE in fp32 with --no_half_vae), minus what
  is cached and moved to the CPU (the VAE after --cache_latents, the text encoders after
  --cache_text_encoder_outputs) and the blocks --blocks_to_swap keeps on the CPU;
- the LoRA: network_dim x (in + out) of every module networks/lora.py wraps (conv_dim x (9 in + out) for the
  3x3 convolutions), its gradients, and the optimizer's state per parameter (AdamW 8 bytes, AdamW8bit 2, ...);
- activations: what autograd keeps for the backward pass, counted layer by layer over the architecture at the
  largest bucket the dataset produces, times the batch size: every ResNet block, transformer block and attention
  of the U-Net (or DiT). Plain attention keeps its heads x tokens x tokens probabilities; SDPA, xformers and
  --mem_eff_attn keep none of those. With --gradient_checkpointing only each block's input is kept, plus one
  block recomputed at a time. A device's Allocator (measured on the CPU, see below) turns the count into
  held bytes;
- on the CPU, the process's whole resident set: the Python runtime with torch and sd-scripts' imports, and the
  load peak (the checkpoint's tensors plus the fp32 models built from them, both alive at once).

Calibration: RUNTIME_BYTES, LAUNCHER_BYTES and CPU_ALLOCATOR were fitted to the measured peak RSS of
real sd-scripts runs on a CPU (benchmarks/bench_memory.py prints estimate vs measured for every row). The CUDA
and MPS constants are the figures cited beside them; no GPU was at hand to measure them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

GIB = 1024 ** 3
MIB = 1024 ** 2

# --- measured on the CPU (benchmarks/bench_memory.py, data in benchmarks/data/memory-calibration-cpu.json) ---
# The trainer's resident set after `import train_network` and its libraries, before the model loads: 0.80 GiB
# (torch 2.14.1, transformers 4.54, diffusers 0.32; sampled from /proc/<pid>/status during a real run).
RUNTIME_BYTES = int(0.80 * GIB)
# `accelerate launch` stays alive beside the trainer, with torch imported: 0.68 GiB resident (same runs).
LAUNCHER_BYTES = int(0.68 * GIB)


@dataclass(frozen=True)
class Allocator:
    """How a device's memory allocator turns counted activation bytes into held bytes: a scale over the count,
    and what the block being recomputed under --gradient_checkpointing holds (times its activations)."""

    activation_scale: float
    recompute_factor: float


# The CPU, fitted over the calibration runs (benchmarks/bench_memory.py): the count misses small temporaries,
# and glibc's malloc keeps the first step's freed blocks (the second step's peak is about 1 GiB above the first's
# at 512 px, then flat over 4 steps); the recomputed block holds its activations, their gradients and the
# allocator's copies (1.37 GiB per 512 px sample measured with checkpointing).
CPU_ALLOCATOR = Allocator(activation_scale=1.8, recompute_factor=2.5)
# A GPU (CUDA's caching allocator, MPS): the count as it is, the recomputed block's activations plus their
# gradients. With these, the VRAM figures sd-scripts documents for SDXL and FLUX.1 hold
# (tests/device/test_memory.py test_cuda_figures_agree_with_the_vram_sd_scripts_documents).
GPU_ALLOCATOR = Allocator(activation_scale=1.0, recompute_factor=2.0)

# --- cited ---
# The CUDA context on the GPU: "around 400MB if CUDA >= 11.7 is used and lazy module loading enabled"
# (pytorch/pytorch#109888, ptrblck); "~300MB ... before CUDA 11.7 ... >1000MB" (pytorch/pytorch#107667).
CUDA_CONTEXT_BYTES = 400 * MIB
# Host RAM the CUDA runtime adds to the process once it is initialized: /usr/bin/time -v max RSS 322,040 kB
# before and 2,056,600 kB after the first CUDA tensor (pytorch/pytorch#113326).
CUDA_HOST_BYTES = int((2_056_600 - 322_040) * 1024)
# MPS: allocations beyond PYTORCH_MPS_HIGH_WATERMARK_RATIO x recommendedMaxWorkingSetSize fail; the default
# ratio is 1.7 (PyTorch docs, "MPS Environment Variables").
MPS_HIGH_WATERMARK_RATIO = 1.7

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
# Optimizer state bytes per trained parameter (fp32 states unless named): torch.optim.AdamW exp_avg +
# exp_avg_sq; bitsandbytes 8-bit states 1 byte each; Adafactor factors its second moment (rows + columns of a
# matrix: a few bytes per LoRA parameter); Prodigy keeps exp_avg, exp_avg_sq, s and p0; Lion and SGD momentum 1.
OPTIMIZER_STATE_BYTES = {
    "adamw": 8, "adam": 8, "adamw8bit": 2, "pagedadamw8bit": 2, "adam8bit": 2, "lion8bit": 1, "pagedlion8bit": 1,
    "adafactor": 0.1, "prodigy": 16, "prodigyplus.prodigyplusschedulefree": 12, "dadaptadam": 12,
    "dadaptation": 12, "dadaptadamw": 12, "dadaptlion": 8, "lion": 4, "sgdnesterov": 4, "sgdnesterov8bit": 1,
    "adamwschedulefree": 8, "radamschedulefree": 8, "sgdschedulefree": 4,
}
DEFAULT_OPTIMIZER_STATE_BYTES = 8  # an optimizer not in the table is counted like AdamW


@dataclass(frozen=True)
class Component:
    """One model part: its parameter count, how its tensors are stored, and the LoRA size per rank."""

    params: int
    file_dtype_bytes: float = 2.0  # bytes per parameter as stored in its file
    lora_io: int = 0  # sum of (in + out) over the Linear / 1x1 modules networks.lora wraps
    conv_io: int = 0  # sum of (9 in + out) over the 3x3 convolutions conv_dim wraps (U-Nets only)
    swap_blocks: tuple[int, ...] = ()  # DiT: parameters of each swappable block (double blocks, then single)
    assumed: bool = False  # True when the size is a known default, not read from a file


@dataclass(frozen=True)
class Run:
    """Everything the estimate depends on, in sd-scripts' terms."""

    family: str  # sd1 | sd2 | sdxl | flux
    components: dict[str, Component]  # unet|transformer, te1, te2, vae
    device: str  # cuda | mps | cpu | xpu
    batch: int
    width: int
    height: int
    mixed_precision: str = "no"
    full_half: bool = False  # --full_fp16 / --full_bf16: the LoRA and its gradients in half precision
    fp8_base: bool = False
    fp8_base_unet: bool = False
    no_half_vae: bool = False
    train_unet: bool = True
    train_te: bool = True
    cache_latents: bool = False
    cache_te: bool = False  # --cache_text_encoder_outputs (SDXL, FLUX)
    gradient_checkpointing: bool = False
    attention: str = "plain"  # plain | sdpa | xformers | mem_eff
    network_dim: int = 4
    conv_dim: int = 0
    network_factor: float = 1.0  # LoHa-like modules hold about twice the parameters of a LoRA of the same rank
    optimizer: str = "AdamW"
    blocks_to_swap: int = 0
    lowram: bool = False
    highvram: bool = False
    token_chunks: int = 1  # max_token_length 150/225: the text encoders run 2 or 3 chunks of 77 tokens
    t5_tokens: int = 512
    file_bytes: int = 0  # the base checkpoint file (read whole into memory by sd-scripts' SD/SDXL loaders)
    cached_samples: int = 0  # images x repeats whose latents --cache_latents keeps in RAM
    cache_to_disk: bool = False


@dataclass
class Estimate:
    """The estimate's figures in bytes. `parts` add up to `train_bytes` (the training peak on the device)."""

    device: str
    parts: dict[str, int]
    train_bytes: int
    load_host_bytes: int  # host RAM while the checkpoint loads and converts (the trainer alone)
    host_train_bytes: int  # host RAM of the trainer while it trains on a GPU (0 on the CPU: it is `train_bytes`)
    launcher_bytes: int = LAUNCHER_BYTES
    device_load_bytes: int = 0  # with --lowram the models are built on the GPU in fp32 first
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        """The process's peak on its device: on the CPU that includes loading, elsewhere it is training."""
        if self.device == "cpu":
            return max(self.train_bytes, self.load_host_bytes)
        return max(self.train_bytes, self.device_load_bytes)


# ---- activations ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UNetSpec:
    """The U-Net layout sd-scripts builds (library/original_unet.py, sdxl_original_unet.py)."""

    channels: tuple[int, ...]
    depth: tuple[int, ...]  # transformer blocks per attention, per level (0: no attention there)
    mid_depth: int
    heads: int | None = None  # a fixed head count (SD1), else channels // head_dim
    head_dim: int = 64
    layers: int = 2
    block_checkpoint: bool = False  # checkpointing per transformer block (SDXL), not per Transformer2DModel

    def n_heads(self, channels: int) -> int:
        return self.heads or channels // self.head_dim


UNETS = {
    "sd1": UNetSpec((320, 640, 1280, 1280), (1, 1, 1, 0), 1, heads=8),
    "sd2": UNetSpec((320, 640, 1280, 1280), (1, 1, 1, 0), 1),
    "sdxl": UNetSpec((320, 640, 1280), (0, 2, 10), 10, block_checkpoint=True),
}
CONTEXT_TOKENS = 77


@dataclass
class Acts:
    """Activation counts of one sample, in elements: kept for backward without and with checkpointing, the
    largest unit recomputed under checkpointing, and the largest short-lived tensor of a backward step."""

    saved: float = 0.0
    probs: float = 0.0  # attention probabilities (plain attention only)
    checkpointed: float = 0.0
    unit_max: float = 0.0
    transient: float = 0.0

    def unit(self, elements: float, probs: float, kept: float, transient: float, recomputed: float | None = None
             ) -> None:
        """One module: its kept activations and probabilities; under checkpointing `kept` stays and
        `recomputed` (default: all of it) is the largest piece recomputed at once."""
        self.saved += elements
        self.probs += probs
        self.checkpointed += kept
        self.unit_max = max(self.unit_max, elements + probs if recomputed is None else recomputed)
        self.transient = max(self.transient, transient)


def _resnet(acts: Acts, cin: int, cout: int, tokens: int) -> None:
    """GroupNorm, SiLU and a 3x3 conv twice: each keeps its input (3 tensors per side)."""
    acts.unit(3.0 * (cin + cout) * tokens, 0.0, cin * tokens, 2.0 * cout * tokens)


def _transformer(acts: Acts, spec: UNetSpec, channels: int, tokens: int, depth: int, attention: str,
                 rank: int) -> None:
    """A Transformer2DModel of `depth` blocks: norms, q/k/v/out projections of self- and cross-attention and
    the GEGLU feed-forward keep about 30 tensors of channels x tokens per block (4 more for the wrapper);
    plain attention also keeps heads x tokens x tokens probabilities; each LoRA keeps rank x tokens."""
    heads = spec.n_heads(channels)
    per_block = 30.0 * channels * tokens + 9.0 * rank * tokens
    probs = heads * tokens * (tokens + CONTEXT_TOKENS) if attention == "plain" else 0.0
    elements = depth * per_block + 4.0 * channels * tokens
    transient = heads * tokens * tokens if attention == "plain" else 8.0 * channels * tokens  # scores beside probs
    if spec.block_checkpoint:  # each block's input is kept, the wrapper's own tensors too
        acts.unit(elements, depth * probs, (depth + 4.0) * channels * tokens, transient, per_block + probs)
    else:
        acts.unit(elements, depth * probs, channels * tokens, transient)


def unet_acts(spec: UNetSpec, width: int, height: int, attention: str, rank: int) -> Acts:
    """Walk the U-Net at the latent size of one sample (width/8 x height/8): down, middle, up."""
    acts = Acts()
    h, w = max(1, height // 8), max(1, width // 8)
    tokens = [math.ceil(h / 2 ** i) * math.ceil(w / 2 ** i) for i in range(len(spec.channels))]
    skips = [(spec.channels[0], tokens[0])]
    acts.saved += spec.channels[0] * tokens[0] * 2  # conv_in
    prev = spec.channels[0]
    for level, channels in enumerate(spec.channels):
        for _ in range(spec.layers):
            _resnet(acts, prev, channels, tokens[level])
            if spec.depth[level]:
                _transformer(acts, spec, channels, tokens[level], spec.depth[level], attention, rank)
            prev = channels
            skips.append((channels, tokens[level]))
        if level < len(spec.channels) - 1:
            acts.saved += channels * tokens[level]  # the downsampling conv's input
            skips.append((channels, tokens[level + 1]))
    last = len(spec.channels) - 1
    _resnet(acts, prev, prev, tokens[last])
    _transformer(acts, spec, prev, tokens[last], spec.mid_depth, attention, rank)
    _resnet(acts, prev, prev, tokens[last])
    for level in reversed(range(len(spec.channels))):
        channels = spec.channels[level]
        for _ in range(spec.layers + 1):
            skip_channels, _ = skips.pop()
            _resnet(acts, prev + skip_channels, channels, tokens[level])
            if spec.depth[level]:
                _transformer(acts, spec, channels, tokens[level], spec.depth[level], attention, rank)
            prev = channels
        if level:
            acts.saved += 2.0 * channels * tokens[level - 1]  # nearest upsampling, then a conv
    acts.saved += 3.0 * spec.channels[0] * tokens[0]  # the output GroupNorm, SiLU and conv
    acts.checkpointed += (2.0 * len(spec.channels) + 5.0) * spec.channels[0] * tokens[0]  # not checkpointed
    return acts


@dataclass(frozen=True)
class DiTSpec:
    """FLUX.1 (library/flux_models.py): 19 double-stream and 38 single-stream blocks, 3072 wide, 24 heads; one
    token per 16x16 pixels (8x VAE, 2x2 patches), and the T5 tokens beside them."""

    double: int = 19
    single: int = 38
    hidden: int = 3072


def dit_acts(spec: DiTSpec, width: int, height: int, text_tokens: int, attention: str, rank: int) -> Acts:
    """Double blocks keep about 25 tensors of hidden x tokens per stream, single blocks about 26; attention is
    always SDPA in flux_models.py, so no token x token probabilities are kept."""
    acts = Acts()
    tokens = math.ceil(height / 16) * math.ceil(width / 16) + text_tokens
    for _ in range(spec.double):
        acts.unit((25.0 * spec.hidden + 12.0 * rank) * tokens, 0.0, spec.hidden * tokens, 8.0 * spec.hidden * tokens)
    for _ in range(spec.single):
        acts.unit((26.0 * spec.hidden + 4.0 * rank) * tokens, 0.0, spec.hidden * tokens, 14.0 * spec.hidden * tokens)
    return acts


def family_acts(run: Run) -> Acts:
    rank = max(run.network_dim, run.conv_dim)
    if run.family == "flux":
        return dit_acts(DiTSpec(), run.width, run.height, run.t5_tokens, run.attention, rank)
    return unet_acts(UNETS[run.family], run.width, run.height, run.attention, rank)


# Text encoders: (layers, width) of each; a trained encoder keeps about 20 tensors of width x tokens per layer.
TEXT_ENCODER_SHAPES = {"sd1": ((12, 768),), "sd2": ((23, 1024),), "sdxl": ((12, 768), (32, 1280)),
                       "flux": ((12, 768),)}
# Under autocast, GroupNorm/LayerNorm and softmax run in fp32 (PyTorch's autocast op list), so about a quarter
# of the kept tensors stay 4 bytes while the rest are 2: 2.5 bytes per element on average. Plain attention
# keeps its fp32 softmax output and the half-precision copy bmm uses: 6 bytes.
AUTOCAST_BYTES = 2.5
AUTOCAST_PROBS_BYTES = 6.0
VAE_ENCODER_CHANNELS = 128  # the VAE encoder's widest feature maps run at full image resolution


def weight_dtype(run: Run) -> str:
    """train_util.prepare_dtype: fp16/bf16 with that mixed precision, else fp32."""
    return run.mixed_precision if run.mixed_precision in ("fp16", "bf16") else "fp32"


def activation_bytes(run: Run) -> tuple[float, float]:
    """Bytes per kept element and per attention-probability element."""
    if run.mixed_precision in ("fp16", "bf16"):
        return AUTOCAST_BYTES, AUTOCAST_PROBS_BYTES
    return 4.0, 4.0


def denoiser(run: Run) -> str:
    return "transformer" if run.family == "flux" else "unet"


def text_encoders(run: Run) -> list[str]:
    return [name for name in ("te1", "te2") if name in run.components]


def _params(run: Run, name: str) -> int:
    part = run.components.get(name)
    return part.params if part else 0


def swapped_params(run: Run) -> int:
    """Parameters --blocks_to_swap keeps on the CPU (flux_models.py enable_block_swap: n // 2 double blocks and
    (n - n // 2) * 2 single blocks)."""
    part = run.components.get(denoiser(run))
    if not run.blocks_to_swap or part is None or not part.swap_blocks:
        return 0
    spec = DiTSpec()
    doubles, singles = part.swap_blocks[:spec.double], part.swap_blocks[spec.double:]
    n_double = min(run.blocks_to_swap // 2, max(0, len(doubles) - 2))
    n_single = min((run.blocks_to_swap - run.blocks_to_swap // 2) * 2, max(0, len(singles) - 2))
    return sum(doubles[:n_double]) + sum(singles[:n_single])


def te_on_device(run: Run, name: str) -> bool:
    """Whether a text encoder stays on the device while training. With cached outputs, SDXL moves both to the
    CPU (they are not trained then); FLUX moves T5-XXL back always and CLIP-L unless it is trained
    (flux_train_network.py cache_text_encoder_outputs_if_needed)."""
    if not run.cache_te:
        return True
    return run.family == "flux" and name == "te1" and run.train_te


def device_weights(run: Run) -> dict[str, int]:
    """The frozen weights on the training device, by component group."""
    wd = DTYPE_BYTES[weight_dtype(run)]
    base_bytes = 1 if run.fp8_base or run.fp8_base_unet else wd
    te_bytes = 1 if run.fp8_base and not run.fp8_base_unet else wd
    out = {"model_weights_bytes": int((_params(run, denoiser(run)) - swapped_params(run)) * base_bytes)}
    on_device = [n for n in text_encoders(run) if run.device == "cpu" or te_on_device(run, n)]
    if on_device:
        out["text_encoder_weights_bytes"] = int(sum(_params(run, n) for n in on_device) * te_bytes)
    if run.device == "cpu" or not run.cache_latents:
        vae_bytes = 4 if run.no_half_vae else wd
        out["vae_weights_bytes"] = int(_params(run, "vae") * vae_bytes)
    return out


def trained(run: Run) -> list[str]:
    """The components the network wraps: the U-Net/DiT, and the text encoders unless --network_train_unet_only
    (for FLUX only CLIP-L: lora_flux.py leaves T5-XXL alone by default)."""
    encoders = text_encoders(run)[:1] if run.family == "flux" else text_encoders(run)
    return ([denoiser(run)] if run.train_unet else []) + (encoders if run.train_te else [])


def lora_params(run: Run) -> int:
    """Parameters of the network: rank x (in + out) over the wrapped modules of what is trained."""
    names = trained(run)
    linear = sum(run.components[n].lora_io for n in names if n in run.components) * run.network_dim
    conv = run.components[denoiser(run)].conv_io * run.conv_dim if run.train_unet and run.conv_dim else 0
    return int((linear + conv) * run.network_factor)


def optimizer_state_bytes(optimizer: str) -> float:
    return OPTIMIZER_STATE_BYTES.get(optimizer.strip().lower(), DEFAULT_OPTIMIZER_STATE_BYTES)


def network_parts(run: Run) -> dict[str, int]:
    """The LoRA's parameters, gradients and optimizer state."""
    params = lora_params(run)
    each = 2 if run.full_half else 4
    return {"lora_params_bytes": params * each, "lora_grads_bytes": params * each,
            "optimizer_state_bytes": int(params * optimizer_state_bytes(run.optimizer))}


def text_encoder_act_elements(run: Run) -> float:
    """Kept activations of the trained text encoders for one sample."""
    if not run.train_te:
        return 0.0
    tokens = CONTEXT_TOKENS * run.token_chunks
    return sum(20.0 * layers * width * tokens for layers, width in TEXT_ENCODER_SHAPES.get(run.family, ()))


def activation_part(run: Run) -> int:
    """The training step's activations on the device, at the largest bucket, for the whole batch."""
    acts = family_acts(run)
    per, probs = activation_bytes(run)
    allocator = CPU_ALLOCATOR if run.device == "cpu" else GPU_ALLOCATOR
    exact = 0.0  # plain attention's probabilities: one large block per layer, which no allocator keeps extra of
    if run.gradient_checkpointing:  # block inputs (in the compute dtype), and one block recomputed at a time
        inputs = DTYPE_BYTES[weight_dtype(run)] if run.mixed_precision in ("fp16", "bf16") else 4
        kept = acts.checkpointed * inputs + allocator.recompute_factor * acts.unit_max * per
    else:
        kept, exact = acts.saved * per, acts.probs * probs
    if run.attention == "plain":
        exact += acts.transient * probs
    else:
        kept += acts.transient * per
    kept += text_encoder_act_elements(run) * per
    step = run.batch * (kept * allocator.activation_scale + exact)
    if not run.cache_latents:  # the VAE encodes the batch first, without gradients: its widest maps at full size
        step += run.batch * 3.0 * VAE_ENCODER_CHANNELS * run.width * run.height * (4 if run.no_half_vae else per)
    return int(step)


def latent_bytes(run: Run) -> int:
    """One cached latent: 4 channels (16 for FLUX's AE) at 1/8 of the image size, fp32."""
    channels = 16 if run.family == "flux" else 4
    return channels * math.ceil(run.width / 8) * math.ceil(run.height / 8) * 4


def train_parts(run: Run) -> dict[str, int]:
    """Everything on the training device during a step, by part."""
    parts: dict[str, int] = {}
    if run.device == "cpu":
        parts["runtime_bytes"] = RUNTIME_BYTES
    elif run.device == "cuda":
        parts["cuda_context_bytes"] = CUDA_CONTEXT_BYTES
    parts.update(device_weights(run))
    parts.update(network_parts(run))
    parts["activations_bytes"] = activation_part(run)
    if run.cache_latents and (run.highvram or run.device == "cpu") and not run.cache_to_disk:
        parts["latent_cache_bytes"] = run.cached_samples * latent_bytes(run)
    return parts


def host_runtime(run: Run) -> int:
    """The trainer's resident set before it loads anything: Python, torch and the imports; plus the CUDA
    runtime's host memory once Accelerator() has initialized CUDA (before the model loads)."""
    return RUNTIME_BYTES + (CUDA_HOST_BYTES if run.device == "cuda" else 0)


def load_dtype_bytes(run: Run, name: str) -> float:
    """Bytes per parameter of each component while it is built in host memory.

    SD1/SD2 (library/model_util.py load_models_from_stable_diffusion_checkpoint): fp32 modules. SDXL
    (sdxl_model_util.load_models_from_sdxl_checkpoint): fp32, the U-Net in half with --full_fp16/--full_bf16.
    FLUX (flux_train_network.py load_target_model): the mixed-precision dtype, or the file's own with
    --fp8_base."""
    part = run.components[name]
    if run.family == "flux":
        keep_file_dtype = run.fp8_base and (name == "transformer" or (name == "te2" and not run.fp8_base_unet))
        return part.file_dtype_bytes if keep_file_dtype else DTYPE_BYTES[weight_dtype(run)]
    if run.family == "sdxl" and name == "unet" and run.full_half:
        return 2
    return 4


def load_host_bytes(run: Run) -> tuple[int, int]:
    """(host, device) bytes while the checkpoint loads. The SD and SDXL loaders read the whole file into a state
    dict and build the models from it while it is alive; FLUX's loader reads tensor by tensor from a memory map
    (those pages are the page cache's, reclaimable). With --lowram the models are built on the GPU."""
    models = int(sum(p.params * load_dtype_bytes(run, n) for n, p in run.components.items()))
    state_dict = 0 if run.family == "flux" else run.file_bytes
    if run.family in ("sd1", "sd2") and not run.file_bytes:  # a diffusers folder: converted to the original U-Net
        state_dict = _params(run, "unet") * 4
    if run.lowram and run.device in ("cuda", "xpu"):
        return host_runtime(run) + state_dict, models + CUDA_CONTEXT_BYTES
    return host_runtime(run) + state_dict + models, 0


def host_train_bytes(run: Run) -> int:
    """Host RAM the trainer holds while it trains on a GPU: runtime, what was moved to the CPU (the VAE after
    caching latents, text encoders whose outputs are cached, swapped blocks) and the latent cache."""
    held = 0
    if run.cache_latents:
        held += _params(run, "vae") * (4 if run.no_half_vae else DTYPE_BYTES[weight_dtype(run)])
        if not run.cache_to_disk and not run.highvram:
            held += run.cached_samples * latent_bytes(run)
    te_bytes = 4 if run.family != "flux" else (1 if run.fp8_base else DTYPE_BYTES[weight_dtype(run)])  # SDXL: fp32
    held += sum(_params(run, n) for n in text_encoders(run) if not te_on_device(run, n)) * te_bytes
    held += swapped_params(run) * (1 if run.fp8_base else DTYPE_BYTES[weight_dtype(run)])
    return host_runtime(run) + held


def estimate(run: Run) -> Estimate:
    """The memory estimate of one run."""
    parts = train_parts(run)
    host, device_load = load_host_bytes(run)
    return Estimate(run.device, parts, sum(parts.values()), host,
                    0 if run.device == "cpu" else host_train_bytes(run), device_load_bytes=device_load)


# ---- what would make it fit -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Saving:
    """One change to the run and how many bytes it saves at the peak."""

    change: str  # what to set, in sd-scripts' terms
    saving_bytes: int


def _smaller_bucket(run: Run) -> tuple[str, Run] | None:
    side = max(run.width, run.height)
    if side <= 512:
        return None
    target = max(512, (int(side * 0.75) // 64) * 64)
    scale = target / side
    smaller = replace(run, width=max(64, int(run.width * scale) // 64 * 64),
                      height=max(64, int(run.height * scale) // 64 * 64))
    return f"a smaller largest bucket: resolution / max_bucket_reso {target} (now {side})", smaller


def candidate_changes(run: Run) -> list[tuple[str, Run]]:
    """Changes that lower the peak, each as (what to set, the run with it)."""
    gpu = run.device in ("cuda", "mps", "xpu")
    out: list[tuple[str, Run]] = []
    options = (
        (not run.gradient_checkpointing, "gradient_checkpointing = true", {"gradient_checkpointing": True}),
        (run.batch > 1, "train_batch_size / batch_size = 1", {"batch": 1}),
        (gpu and not run.cache_latents, "cache_latents = true", {"cache_latents": True}),
        (gpu and run.family in ("sdxl", "flux") and not run.cache_te,
         "network_train_unet_only = true and cache_text_encoder_outputs = true",
         {"cache_te": True, "train_te": False}),
        (run.attention == "plain" and run.family != "flux", "sdpa = true", {"attention": "sdpa"}),
        (gpu and run.mixed_precision == "no", 'mixed_precision = "bf16" (or "fp16")', {"mixed_precision": "bf16"}),
        (run.device == "cuda" and optimizer_state_bytes(run.optimizer) > 2, 'optimizer_type = "AdamW8bit"',
         {"optimizer": "AdamW8bit"}),
        (gpu and run.family in ("sdxl", "flux") and run.mixed_precision != "no" and not run.fp8_base,
         "fp8_base = true", {"fp8_base": True}),
        (gpu and run.family == "flux" and run.blocks_to_swap < 16, "blocks_to_swap = 16", {"blocks_to_swap": 16}),
        (run.network_dim >= 32, f"network_dim = {run.network_dim // 2}", {"network_dim": run.network_dim // 2}),
    )
    for wanted, change, edits in options:
        if wanted:
            out.append((change, replace(run, **edits)))
    smaller = _smaller_bucket(run)
    if smaller:
        out.append(smaller)
    return out


def savings(run: Run) -> list[Saving]:
    """What would lower the peak and by how much, largest saving first."""
    peak = estimate(run).peak_bytes
    found = [Saving(change, peak - estimate(other).peak_bytes) for change, other in candidate_changes(run)]
    return sorted((s for s in found if s.saving_bytes > 0), key=lambda s: -s.saving_bytes)
