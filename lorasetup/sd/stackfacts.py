"""The stack probe's answer as typed facts (lorasetup/sd/programs/stack.py writes it as JSON).

`StackFacts.parse(answer)` turns the JSON object into frozen dataclasses: a fact the probe could not collect is
None (or empty), never a missing key, so the device gate, `lorasetup env` and deps.deep read attributes instead
of `.get(...) or {}`. `schema_version` is the answer's shape: the program and this parser ship together, and the
recorded answers in tests/data/probes/ carry it too, so an answer of another shape is refused, not misread.
Keys the parser does not know are ignored (a newer probe may say more).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from lorasetup.engine.probe import ProbeError
from lorasetup.sd.programs.stack import SCHEMA_VERSION

F = TypeVar("F")


def _pick(cls: type[F], raw: Any, **nested: Any) -> F:
    """`cls` from the JSON object `raw`: its own fields (absent ones keep their defaults), plus `nested`."""
    if not isinstance(raw, Mapping):
        raise ProbeError(f"the stack probe's answer has a {type(raw).__name__} where {cls.__name__} belongs")
    names = {f.name for f in fields(cls)} - set(nested)  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in names}, **nested)


@dataclass(frozen=True)
class PythonFacts:
    """The training interpreter itself; the mac_* fields only on macOS."""

    version: str | None = None
    executable: str | None = None
    machine: str | None = None
    platform: str | None = None
    sys_platform: str | None = None
    mac_ver: str | None = None
    proc_translated: str | None = None  # "1" under Rosetta
    arm64_hardware: str | None = None  # "1" on Apple Silicon


@dataclass(frozen=True)
class SmiGpu:
    """One row of `nvidia-smi --query-gpu` (text, as nvidia-smi prints it)."""

    name: str = ""
    memory_mib: str = ""
    driver: str = ""
    capability: str = ""


@dataclass(frozen=True)
class NvidiaSmi:
    path: str | None = None
    gpus: tuple[SmiGpu, ...] = ()
    error: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> NvidiaSmi | None:
        if raw is None:
            return None
        return _pick(cls, raw, gpus=tuple(_pick(SmiGpu, g) for g in raw.get("gpus") or ()))


@dataclass(frozen=True)
class CudaDevice:
    name: str = ""
    capability: tuple[int, int] = (0, 0)
    total_memory: int = 0

    @classmethod
    def parse(cls, raw: Any) -> CudaDevice:
        major, minor = (list(raw.get("capability") or ()) + [0, 0])[:2] if isinstance(raw, Mapping) else (0, 0)
        return _pick(cls, raw, capability=(int(major), int(minor)), total_memory=int(raw.get("total_memory") or 0))


@dataclass(frozen=True)
class TorchFacts:
    """torch in the training interpreter: its build, and the devices it reports under launch's environment.
    A query that raised is None, with its error in `errors`."""

    version: str = "?"
    cuda: str | None = None  # the CUDA version of the build
    hip: str | None = None  # the ROCm version of the build
    torchvision: str | None = None  # its installed version
    cuda_available: bool | None = None
    cuda_device_count: int | None = None
    cuda_device_count_machine: int | None = None  # before launch's CUDA_VISIBLE_DEVICES
    cuda_devices: tuple[CudaDevice, ...] = ()
    cuda_arch_list: tuple[str, ...] = ()
    cuda_bf16: bool | None = None
    mps_built: bool | None = None
    mps_available: bool | None = None
    mps_macos14: bool | None = None
    mps_recommended_max_memory: int | None = None
    xpu_available: bool | None = None
    xpu_devices: tuple[str, ...] = ()
    device_ops: dict[str, str | None] = field(default_factory=dict)  # device -> None | a tiny matmul's error
    warnings: tuple[str, ...] = ()  # what torch warned meanwhile
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> TorchFacts | None:
        if raw is None:
            return None
        return _pick(cls, raw, cuda_devices=tuple(CudaDevice.parse(d) for d in raw.get("cuda_devices") or ()),
                     cuda_arch_list=tuple(raw.get("cuda_arch_list") or ()),
                     xpu_devices=tuple(raw.get("xpu_devices") or ()), warnings=tuple(raw.get("warnings") or ()),
                     device_ops=dict(raw.get("device_ops") or {}), errors=dict(raw.get("errors") or {}))

    def available(self, device: str) -> bool:
        """torch.<device>.is_available() said yes."""
        return bool(getattr(self, f"{device}_available", False))

    def build_label(self) -> str:
        if self.hip:
            return f"ROCm {self.hip} build"
        if self.cuda:
            return f"CUDA {self.cuda} build"
        if self.mps_built:
            return "build with MPS"
        if self.xpu_available:
            return "XPU build"
        return "CPU-only build"


@dataclass(frozen=True)
class LaunchFacts:
    """What `accelerate launch` decided from the config, and the environment it sets."""

    launcher: str | None = None  # simple, multi_gpu, use_deepspeed, ...
    num_processes: int | None = None
    num_machines: int | None = None
    gpu_ids: str | None = None
    mixed_precision: str | None = None
    use_cpu: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AcceleratorFacts:
    """What Accelerator() reported when built as sd-scripts builds it."""

    device: str = ""
    mixed_precision: str | None = None
    distributed_type: str | None = None
    num_processes: int | None = None


@dataclass(frozen=True)
class AccelerateFacts:
    """accelerate in the training interpreter. `accelerator` is built with sd-scripts' mixed precision; when
    that failed (`accelerator_error`), with "no" (failing that too: `accelerator_error_no`)."""

    version: str | None = None
    default_config_file: str | None = None
    config: dict[str, Any] | None = None  # the config file's values as accelerate reads them
    config_error: str | None = None
    launch: LaunchFacts | None = None
    launch_error: str | None = None
    accelerator: AcceleratorFacts | None = None
    accelerator_error: str | None = None
    accelerator_error_no: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> AccelerateFacts | None:
        if raw is None:
            return None
        launch, built = raw.get("launch"), raw.get("accelerator")
        return _pick(cls, raw, launch=None if launch is None else _pick(LaunchFacts, launch),
                     accelerator=None if built is None else _pick(AcceleratorFacts, built))


@dataclass(frozen=True)
class StackFacts:
    """The whole answer. `imports`/`from_imports`: module or "module:name" -> None | the real error line.
    `stage`: what ran when the interpreter died (None when it finished); `crash`: what died where, when compiled
    code killed it (earlier stages' facts are kept)."""

    schema_version: int = SCHEMA_VERSION
    python: PythonFacts = field(default_factory=PythonFacts)
    nvidia_smi: NvidiaSmi | None = None  # None: not on PATH
    torch: TorchFacts | None = None  # None: not imported (`torch_error` says why)
    torch_error: str | None = None
    accelerate: AccelerateFacts | None = None
    accelerate_error: str | None = None
    imports: dict[str, str | None] = field(default_factory=dict)
    from_imports: dict[str, str | None] = field(default_factory=dict)
    targets_error: str | None = None  # the deep-import targets could not be computed
    timings: dict[str, float] = field(default_factory=dict)
    stage: str | None = None
    crashed_in: str | None = None
    done: bool = False
    crash: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> StackFacts:
        """The typed facts of one answer; ProbeError when it is not an answer of this schema."""
        if not isinstance(raw, Mapping):
            raise ProbeError(f"the stack probe answered a {type(raw).__name__}, not an object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProbeError(f"the stack probe's answer has schema_version {version!r}; this lorasetup reads "
                             f"{SCHEMA_VERSION}")
        return _pick(cls, raw, python=_pick(PythonFacts, raw.get("python") or {}),
                     nvidia_smi=NvidiaSmi.parse(raw.get("nvidia_smi")), torch=TorchFacts.parse(raw.get("torch")),
                     accelerate=AccelerateFacts.parse(raw.get("accelerate")),
                     imports=dict(raw.get("imports") or {}), from_imports=dict(raw.get("from_imports") or {}),
                     timings=dict(raw.get("timings") or {}))
