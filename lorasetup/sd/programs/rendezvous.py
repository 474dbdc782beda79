"""One rank of lorasetup's rendezvous check, started by the run's own `accelerate launch` command.

Usage (by lorasetup only): `accelerate launch <the run's flags> rendezvous.py PARAMS.json`. Each rank writes
`rank-<RANK>.started.json` before it joins, builds `Accelerator()` the way sd-scripts' train_util.
prepare_accelerator does, writes `rank-<RANK>.json` with what it sees, then all ranks exchange their facts with
one all_gather (accelerate's gather_object) and every node's local main writes `gathered.json`. Standard
library only at module level: torch and accelerate are imported inside `main`, so an import error is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

NAMES_CAP = 2000  # file names sent per dataset folder, enough to name what is missing


def write(out: Path, name: str, data: dict[str, Any]) -> None:
    """Write atomically, so lorasetup never reads half a file."""
    tmp = out / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, out / name)


def env_rank() -> dict[str, Any]:
    """The ranks the launcher put in the environment (torchrun / accelerate)."""
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k.lower(): os.environ.get(k) for k in keys}


def git_commit(root: str | None) -> str | None:
    """HEAD of a checkout without running git (also a submodule, whose .git is a `gitdir:` file)."""
    if not root:
        return None
    git = Path(root) / ".git"
    try:
        if git.is_file():
            git = (git.parent / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None


def distributions() -> list[str]:
    from importlib import metadata
    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return sorted(names, key=str.lower)


def dataset_listing(folder: str) -> dict[str, Any]:
    """Relative names and sizes of the files under a dataset folder (its subfolders too, one level deep)."""
    root = Path(folder)
    if not root.is_dir():
        return {"exists": False, "count": 0, "digest": None, "names": []}
    entries = []
    for path in sorted(root.iterdir()):
        items = sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else [path]
        for item in items:
            try:
                if item.is_file():
                    entries.append(f"{item.relative_to(root).as_posix()}\t{item.stat().st_size}")
            except OSError:
                continue
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    return {"exists": True, "count": len(entries), "digest": digest, "names": entries[:NAMES_CAP]}


def device_memory(torch: Any, device: Any) -> dict[str, Any]:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"free_bytes": free, "total_bytes": total, "name": torch.cuda.get_device_name(device)}
    if device.type == "mps":
        return {"total_bytes": torch.mps.recommended_max_memory()}
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        avail = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
        return {"free_bytes": avail}
    except (OSError, StopIteration, ValueError):
        return {}


def accelerator(params: dict[str, Any]) -> Any:
    """Accelerator() as sd-scripts' train_util.prepare_accelerator builds it (kwargs handlers included)."""
    import datetime

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from packaging.version import Version
    handlers = []
    if torch.cuda.device_count() > 1:
        backend = "gloo" if os.name == "nt" or not torch.cuda.is_available() else "nccl"
        libuv = os.name == "nt" and Version(torch.__version__.split("+")[0]) >= Version("2.4.0")
        handlers.append(InitProcessGroupKwargs(
            backend=backend, init_method="env://?use_libuv=False" if libuv else None,
            timeout=datetime.timedelta(seconds=params["timeout_s"])))
    return Accelerator(mixed_precision=params.get("mixed_precision") or "no", kwargs_handlers=handlers)


def facts(acc: Any, params: dict[str, Any]) -> dict[str, Any]:
    import accelerate
    import torch
    state = acc.state
    return {
        "host": socket.gethostname(), "pid": os.getpid(), "rank": acc.process_index,
        "local_rank": acc.local_process_index, "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type).split(".")[-1], "backend": getattr(state, "backend", None),
        "device": str(acc.device), "memory": device_memory(torch, acc.device), "env": env_rank(),
        "torch": torch.__version__, "accelerate": accelerate.__version__, "python": sys.version.split()[0],
        "sd_scripts_commit": git_commit(params.get("sd_scripts")), "distributions": distributions(),
        "datasets": [{"folder": folder, **dataset_listing(folder)} for folder in params.get("dataset_dirs", [])],
    }


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    out = Path(params["out_dir"])
    ranks = env_rank()
    tag = ranks["rank"] if ranks["rank"] is not None else f"pid{os.getpid()}"
    write(out, f"rank-{tag}.started.json", {"host": socket.gethostname(), "pid": os.getpid(), "env": ranks,
                                            "time": time.time()})
    try:
        acc = accelerator(params)
        mine = facts(acc, params)
        write(out, f"rank-{tag}.json", mine)
        from accelerate.utils import gather_object
        everyone = gather_object([mine])
        if acc.is_local_main_process:
            write(out, "gathered.json", {"ranks": everyone})
        acc.wait_for_everyone()
    except BaseException as exc:  # noqa: BLE001 - every failure is the answer, written for lorasetup to read
        write(out, f"rank-{tag}.error.json", {"error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()[-4000:]})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
