"""A multi-process or multi-machine launch, proven before the run: the run's own `accelerate launch` starts a
small program on every rank (sd/programs/rendezvous.py), which builds Accelerator() as sd-scripts does and
exchanges what each rank sees with one all_gather. This module plans that launch, runs it, and reads the answer.

What the launch asks comes from the run's launch flags over the accelerate config file, as `accelerate launch`
merges them (commands/launch.py `_validate_launch_command`: flags win, the config fills the rest).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasetup.engine.files import FileProblem, json_object, read_source
from lorasetup.engine.probe import kill_tree, track
from lorasetup.engine.target import Target
from lorasetup.sd.run.command import launcher, run_env

PROGRAM = Path(__file__).with_name("programs") / "rendezvous.py"
DEFAULT_PORT = 29500  # accelerate utils/launch.py prepare_multi_gpu_env: main_process_port None -> 29500
CONFIG_KEYS = ("distributed_type", "num_processes", "num_machines", "machine_rank", "main_process_ip",
               "main_process_port", "use_cpu", "same_network")


@dataclass(frozen=True)
class KnownError:
    """An error line a failed launch prints, and what to do about it."""

    pattern: re.Pattern[str]
    what: str
    hint: str


def _known(pattern: str, what: str, hint: str) -> KnownError:
    return KnownError(re.compile(pattern, re.IGNORECASE), what, hint)


KNOWN_ERRORS = (
    _known(r"Distributed package doesn't have NCCL built in|ProcessGroupNCCL is only supported with GPUs",
           "this torch has no NCCL (Windows and macOS builds never have it)",
           "use the gloo backend: on Windows sd-scripts asks for gloo itself when it sees more than one GPU; "
           "otherwise train with one process (`--num_processes 1`) or on Linux/WSL2 with a CUDA torch"),
    _known(r"use_libuv was requested but PyTorch was built without libuv support",
           "torch >= 2.4 on Windows asks for libuv, which this build lacks",
           "set USE_LIBUV=0 in the environment before `accelerate launch` (PowerShell: $env:USE_LIBUV=0)"),
    _known(r"Tried to launch distributed communication on port|address already in use|EADDRINUSE",
           "the rendezvous port is taken by another process",
           "pick a free port: `--main_process_port {next_port}` (or 0 for any free port on one machine)"),
    _known(r"Connection refused|connect\(\) timed out|Connection timed out|DistNetworkError|"
           r"failed to connect|No route to host|Name or service not known",
           "a process could not reach the rendezvous address",
           "use the main machine's address that the others can reach (not 127.0.0.1 or localhost) as "
           "main_process_ip, open main_process_port in its firewall, and set GLOO_SOCKET_IFNAME / "
           "NCCL_SOCKET_IFNAME to the network interface between the machines"),
    _known(r"invalid device ordinal",
           "more processes than visible GPUs on this machine",
           "set --num_processes to the number of GPUs (nvidia-smi -L), or CUDA_VISIBLE_DEVICES to the ones to use"),
)


@dataclass
class LaunchPlan:
    """What the launch asks for: processes in all, machines, this machine's rank and the rendezvous address."""

    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    multi_gpu: bool = False
    cpu: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.num_machines > 1

    @property
    def is_main(self) -> bool:
        return self.num_machines <= 1 or self.machine_rank == 0

    @property
    def port(self) -> int:
        return self.main_process_port if self.main_process_port is not None else DEFAULT_PORT

    @property
    def address(self) -> str:
        return f"{self.main_process_ip or '127.0.0.1'}:{self.port}"


def _flag_parser() -> argparse.ArgumentParser:
    """The `accelerate launch` flags that shape the rendezvous (the rest pass through untouched)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--multi_gpu", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--num_machines", type=int)
    p.add_argument("--machine_rank", type=int)
    p.add_argument("--main_process_ip")
    p.add_argument("--main_process_port", type=int)
    return p


def config_values(path: Path | None) -> dict[str, Any]:
    """The rendezvous keys of an accelerate config file. accelerate writes JSON (`accelerate config default`)
    or flat `key: value` YAML (`accelerate config`); both are read here without a YAML library."""
    if path is None or not path.is_file():
        return {}
    try:
        text = read_source(path)
    except FileProblem:  # device.accelerate reports a config it cannot read
        return {}
    try:
        data = json.loads(text)
        return {k: data[k] for k in CONFIG_KEYS if isinstance(data, dict) and k in data}
    except ValueError:
        pass
    found: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        m = re.search(rf"^{key}:\s*['\"]?([^'\"\n#]*?)['\"]?\s*(#.*)?$", text, re.MULTILINE)
        if m:
            found[key] = m.group(1).strip()
    return found


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def launch_plan(target: Target, config_file: Path | None) -> LaunchPlan:
    """The launch flags over the config file, as accelerate merges them."""
    flags, _ = _flag_parser().parse_known_args(target.launch_args)
    config = config_values(config_file)
    plan = LaunchPlan()
    for name in ("num_processes", "num_machines", "machine_rank", "main_process_port"):
        value = getattr(flags, name)
        origin = "launch flags"
        if value is None and config.get(name) not in (None, ""):
            value, origin = _int(config[name], getattr(plan, name) or 0), str(config_file)
        if value is not None:
            setattr(plan, name, value)
            plan.sources[name] = origin
    plan.main_process_ip = flags.main_process_ip or (str(config["main_process_ip"]) if config.get(
        "main_process_ip") else None)
    plan.multi_gpu = flags.multi_gpu or str(config.get("distributed_type", "")).upper().startswith("MULTI_")
    plan.cpu = flags.cpu or str(config.get("use_cpu", "")).lower() == "true"
    return plan


def port_in_use(plan: LaunchPlan) -> bool:
    """Would the rendezvous server fail to listen on this machine? (Only the main machine listens.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", plan.port))
        except OSError:
            return True
    return False


@dataclass
class Outcome:
    """What one rendezvous launch left behind."""

    returncode: int | None
    timed_out: bool
    seconds: float
    output: str
    gathered: list[dict[str, Any]] | None
    started: list[dict[str, Any]]
    joined: list[dict[str, Any]]
    errors: list[dict[str, Any]]


def _collect(out: Path, pattern: str) -> list[dict[str, Any]]:
    found = (json_object(p) for p in sorted(out.glob(pattern)))
    return [f for f in found if f is not None]


def run_rendezvous(target: Target, params: dict[str, Any], timeout: float) -> Outcome:
    """Run the program through the run's own launch command; kill the whole tree at the deadline."""
    with tempfile.TemporaryDirectory(prefix="lorasetup-rdzv-") as tmp:
        out = Path(tmp)
        (out / "params.json").write_text(json.dumps({**params, "out_dir": str(out), "timeout_s": timeout}))
        argv = [*launcher(target), str(PROGRAM), str(out / "params.json")]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=run_env(), start_new_session=True, text=True, errors="replace")
        forget = track(proc)  # a runner that gives up on the check stops the launch
        try:
            output, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            output, _ = proc.communicate()
            timed_out = True
        forget()
        gathered = json_object(out / "gathered.json")
        return Outcome(None if timed_out else proc.returncode, timed_out, time.monotonic() - start, output or "",
                       (gathered or {}).get("ranks"), _collect(out, "rank-*.started.json"),
                       [r for r in _collect(out, "rank-*.json") if "rank" in r], _collect(out, "rank-*.error.json"))


def known_error(text: str) -> tuple[KnownError, str] | None:
    """The first known error in the output (or a rank's error), and the line that showed it."""
    for line in text.splitlines():
        for known in KNOWN_ERRORS:
            if known.pattern.search(line):
                line = line.strip()
                return known, line if len(line) <= 200 else line[:197] + "..."
    return None


def last_error_line(text: str) -> str | None:
    """The exception line closest to the end of a traceback-laden output."""
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception)\b", ln)]
    return lines[-1][:300] if lines else None


def where(rank: dict[str, Any]) -> str:
    return f"{rank.get('host')} rank {rank.get('rank')}"


def _spread(label: str, ranks: list[dict[str, Any]], key: str) -> str | None:
    """`label: A on host rank 0, B on host rank 1` when the ranks disagree on `key`."""
    by_value: dict[str, list[str]] = {}
    for r in ranks:
        by_value.setdefault(str(r.get(key)), []).append(where(r))
    if len(by_value) < 2:
        return None
    return f"{label} differs: " + "; ".join(f"{value} on {', '.join(places)}" for value, places in by_value.items())


def _distribution_diffs(ranks: list[dict[str, Any]]) -> list[str]:
    base = set(ranks[0].get("distributions") or [])
    out = []
    for r in ranks[1:]:
        mine = set(r.get("distributions") or [])
        extra, missing = sorted(mine - base), sorted(base - mine)
        if extra or missing:
            change = [f"+{d}" for d in extra[:6]] + [f"-{d}" for d in missing[:6]]
            out.append(f"installed packages differ on {where(r)} from {where(ranks[0])}: {', '.join(change)}")
    return out


def _dataset_diffs(ranks: list[dict[str, Any]]) -> list[str]:
    out = []
    base = ranks[0].get("datasets") or []
    for r in ranks[1:]:
        for mine, ref in zip(r.get("datasets") or [], base):
            if mine.get("digest") == ref.get("digest"):
                continue
            names, ref_names = set(mine.get("names") or []), set(ref.get("names") or [])
            missing = sorted(n.split("\t")[0] for n in ref_names - names)[:5]
            extra = sorted(n.split("\t")[0] for n in names - ref_names)[:5]
            state = "missing" if not mine.get("exists") else f"{mine.get('count')} files vs {ref.get('count')}"
            out.append(f"dataset folder {mine.get('folder')} on {where(r)} differs from {where(ranks[0])} "
                       f"({state})" + (f"; missing there: {', '.join(missing)}" if missing else "")
                       + (f"; only there: {', '.join(extra)}" if extra else ""))
    return out


def mismatches(ranks: list[dict[str, Any]]) -> list[str]:
    """Every way the ranks disagree on what the run depends on, by host and rank."""
    device_kinds = [{**r, "device_kind": str(r.get("device", "")).split(":")[0]} for r in ranks]
    spreads = [_spread("torch", ranks, "torch"), _spread("accelerate", ranks, "accelerate"),
               _spread("Python", ranks, "python"), _spread("sd-scripts commit", ranks, "sd_scripts_commit"),
               _spread("device type", device_kinds, "device_kind"), _spread("backend", ranks, "backend")]
    return [s for s in spreads if s] + _distribution_diffs(ranks) + _dataset_diffs(ranks)
