"""device.distributed: real `accelerate launch` runs of the rendezvous program, two processes with gloo on
localhost, and two "machines" as two network namespaces joined by a veth pair (as root)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lorasetup.engine.result import Result, Status
from lorasetup.engine.target import Target
from lorasetup.sd.distributed import KNOWN_ERRORS, known_error, launch_plan
from tests.support.checks import run_checks

PYTHON = Path(sys.executable)
LORASETUP = shutil.which("lorasetup", path=str(PYTHON.parent)) or "lorasetup"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_check(target: Target) -> Result:
    return run_checks(target, ["device.distributed"])["device.distributed"]


def two_processes(tmp_path: Path, port: int, **kw) -> Target:
    return Target(python=PYTHON, device="cpu", accelerate_config=None,
                  launch_args=["--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)], **kw)


@pytest.fixture
def cpu_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU training with gloo: what a person sets for a multi-process run without a GPU."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


# ---- the plan: flags over the config file, as accelerate merges them ------------------------------------------

def test_single_process_has_nothing_to_meet(tmp_path: Path) -> None:
    result = run_check(Target(python=PYTHON, device="cpu", launch_args=["--num_processes", "1"]))
    assert result.status is Status.SKIP and "one process" in result.summary


def test_flags_win_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "acc.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 4\n"
                      "num_machines: 2\nmachine_rank: 1\nmain_process_ip: 10.0.0.5\nmain_process_port: 29600\n")
    plan = launch_plan(Target(launch_args=["--num_processes", "8"]), config)
    assert (plan.num_processes, plan.num_machines, plan.machine_rank) == (8, 2, 1)
    assert plan.address == "10.0.0.5:29600" and plan.multi_gpu and not plan.is_main
    json_config = tmp_path / "default_config.yaml"  # `accelerate config default` writes JSON
    json_config.write_text(json.dumps({"distributed_type": "NO", "num_processes": 1, "use_cpu": True}))
    assert not launch_plan(Target(), json_config).distributed


@pytest.mark.parametrize("line", [
    "RuntimeError: Distributed package doesn't have NCCL built in",
    "torch.distributed.DistStoreError: use_libuv was requested but PyTorch was built without libuv support",
    "ConnectionError: Tried to launch distributed communication on port `29500`, but another process is using it",
    "torch.distributed.DistNetworkError: The client socket has timed out after 60s while trying to connect to "
    "(10.0.0.1, 29500). Connection refused",
    "RuntimeError: CUDA error: invalid device ordinal",
])
def test_known_error_lines_map_to_a_hint(line: str) -> None:
    found = known_error(f"Traceback (most recent call last):\n  File x\n{line}\n")
    assert found is not None and found[0] in KNOWN_ERRORS and found[1] == line.strip()


# ---- two real processes on this machine -----------------------------------------------------------------------

def test_two_processes_meet_and_agree(tmp_path: Path, cpu_ddp: None) -> None:
    result = run_check(two_processes(tmp_path, free_port()))
    assert result.status is Status.OK, result.render() if hasattr(result, "render") else result
    assert "2 processes on 1 machine(s) met" in result.summary and "gloo" in result.summary
    assert [r["rank"] for r in result.data["ranks"]] == [0, 1]


def test_without_cuda_or_cpu_flag_each_process_trains_alone(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """sd-scripts' Accelerator() on a machine without CUDA: accelerate makes every launched process its own
    single-process run (DistributedType.NO), so N processes would train N separate LoRAs."""
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    result = run_check(two_processes(tmp_path, free_port()))
    assert result.status is Status.FAIL and "each trains alone" in result.summary
    assert "ACCELERATE_USE_CPU=1" in result.hint


def test_a_package_only_rank_1_sees_is_named_by_rank(tmp_path: Path, cpu_ddp: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real difference between ranks: rank 1's interpreter finds one more installed distribution."""
    extra = tmp_path / "extra" / "onlyonrank1-1.0.dist-info"
    extra.mkdir(parents=True)
    (extra / "METADATA").write_text("Metadata-Version: 2.1\nName: onlyonrank1\nVersion: 1.0\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import os, sys\nif os.environ.get('RANK') == '1':\n    sys.path.append({str(extra.parent)!r})\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = run_check(two_processes(tmp_path, free_port()))
    assert result.status is Status.FAIL, result.summary
    assert any("rank 1" in d and "+onlyonrank1==1.0" in d for d in result.details), result.details


def test_a_busy_main_process_port_is_named(tmp_path: Path, cpu_ddp: None) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_check(two_processes(tmp_path, port))
    assert result.status in (Status.WARN, Status.FAIL)
    assert f"main_process_port {port}" in result.summary or str(port) in " ".join(result.details)
    assert "--main_process_port" in result.hint


# ---- two machines: two network namespaces joined by a veth pair ------------------------------------------------

def _sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def two_machines():
    """Namespaces lsA (10.213.7.1) and lsB (10.213.7.2): the project's own test hosts, on a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("network namespaces need root, iproute2 (`ip`) and util-linux (`unshare`)")
    suffix = str(os.getpid() % 10000)
    ns = (f"lsA{suffix}", f"lsB{suffix}")
    made = _sh("ip", "netns", "add", ns[0])
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        steps = [("ip", "netns", "add", ns[1]),
                 ("ip", "link", "add", f"va{suffix}", "type", "veth", "peer", "name", f"vb{suffix}"),
                 ("ip", "link", "set", f"va{suffix}", "netns", ns[0]),
                 ("ip", "link", "set", f"vb{suffix}", "netns", ns[1])]
        for name, dev, addr in ((ns[0], f"va{suffix}", "10.213.7.1/24"), (ns[1], f"vb{suffix}", "10.213.7.2/24")):
            steps += [("ip", "-n", name, "addr", "add", addr, "dev", dev), ("ip", "-n", name, "link", "set", dev, "up"),
                      ("ip", "-n", name, "link", "set", "lo", "up")]
        for step in steps:
            done = _sh(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot wire the namespaces ({' '.join(step)}): {done.stderr.strip()}")
        yield {"ns": ns, "ifname": (f"va{suffix}", f"vb{suffix}")}
    finally:
        for name in ns:
            _sh("ip", "netns", "del", name)


def node(machines: dict, rank: int, tmp_path: Path, dataset: Path, timeout: float) -> subprocess.Popen:
    """One machine's `lorasetup doctor`, in its namespace, with its own host name and machine_rank."""
    work = tmp_path / f"node{rank}"
    work.mkdir(exist_ok=True)
    (work / "dataset.toml").write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n"
                                       f"image_dir = '{dataset}'\n")
    launch = (f"--multi_gpu --num_machines 2 --num_processes 2 --machine_rank {rank} "
              f"--main_process_ip 10.213.7.1 --main_process_port 29611")
    cmd = (f"hostname node{rank} && exec {LORASETUP} doctor --only device.distributed --device cpu "
           f"--python {PYTHON} --dataset-config {work / 'dataset.toml'} --launch-args '{launch}' "
           f"--rendezvous-timeout {timeout} --json")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "GLOO_SOCKET_IFNAME": machines["ifname"][rank]}
    return subprocess.Popen(["ip", "netns", "exec", machines["ns"][rank], "unshare", "--uts", "sh", "-c", cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)


def result_of(proc: subprocess.Popen) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=180)
    report = json.loads(out)
    return proc.returncode, next(r for r in report["results"] if r["id"] == "device.distributed")


def make_dataset(path: Path, names: list[str]) -> Path:
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_bytes(b"not really an image, only listed")
    return path


def test_two_machines_meet(two_machines: dict, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", ["a.png", "b.png"])
    procs = [node(two_machines, rank, tmp_path, data, 60) for rank in (0, 1)]
    (rc0, r0), (rc1, r1) = (result_of(p) for p in procs)
    assert r0["status"] == "ok" and r1["status"] == "ok", (r0, r1)
    assert "2 processes on 2 machine(s) met" in r0["summary"]
    assert sorted(r["host"] for r in r0["data"]["ranks"]) == ["node0", "node1"]
    assert rc0 == rc1 == 0


def test_a_dataset_file_missing_on_one_machine_is_named(two_machines: dict, tmp_path: Path) -> None:
    procs = [node(two_machines, 0, tmp_path, make_dataset(tmp_path / "d0", ["a.png", "b.png"]), 60),
             node(two_machines, 1, tmp_path, make_dataset(tmp_path / "d1", ["a.png"]), 60)]
    (rc0, r0), _ = (result_of(p) for p in procs)
    assert r0["status"] == "fail" and rc0 == 1
    assert any("node1 rank 1" in d and "missing there: b.png" in d for d in r0["details"]), r0["details"]


def test_a_machine_that_never_joins_is_named(two_machines: dict, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", ["a.png"])
    rc, r0 = result_of(node(two_machines, 0, tmp_path, data, 8))
    assert rc == 1 and r0["status"] == "fail"
    assert r0["summary"].startswith("the launch did not meet within 8 s at 10.213.7.1:29611")
    assert "machine_rank 0 is here, machine_rank 1 did not join" in r0["summary"]
    assert any("start the same launch on machine_rank 1" in d for d in r0["details"]), r0["details"]


def test_launch_args_come_from_the_config_file_environment_and_flags(tmp_path: Path) -> None:
    from lorasetup.engine.target import load_target
    (tmp_path / "lorasetup.toml").write_text('launch_args = "--multi_gpu --num_processes 2"\n')
    assert load_target(cwd=tmp_path, environ={}).launch_args == ["--multi_gpu", "--num_processes", "2"]
    env = {"LORASETUP_LAUNCH_ARGS": "--num_processes 4"}
    assert load_target(cwd=tmp_path, environ=env).launch_args == ["--num_processes", "4"]
    flagged = load_target({"launch_args": "--num_machines 2"}, cwd=tmp_path, environ=env)
    assert flagged.launch_args == ["--num_machines", "2"] and flagged.sources["launch_args"] == "flag"
