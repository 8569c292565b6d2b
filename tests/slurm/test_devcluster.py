"""`tsslurm dev-cluster up|status|down` on a second, throw-away dev cluster (its own directory and
ports, no accounting to stay quick), so the shared one is never disturbed: up from nothing, up
again (idempotent; restarts a killed slurmd), status, down (only our processes), down --wipe."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsslurm.devcluster import host
from tsslurm.devcluster.layout import Layout, Options, fallback_run_dir
from tsslurm.devcluster.processes import read_pid, slurm_daemons

TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def _free_port_base() -> int:
    """A port base whose every port the cluster uses is free now."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000, 100)
        ports = [base + 6, base + 17, base + 19] + [base + 21 + i for i in range(8)]
        if all(_bindable(port) for port in ports):
            return base
    raise AssertionError("no free port range for a second dev cluster")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SLURM_CONF", "TSSLURM_DEVCLUSTER_DIR"}}
    return subprocess.run([TSSLURM, "dev-cluster", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """Under pytest's 0700 tmp_path: munged refuses sockets there, so they move to /run."""
    root = tmp_path / "dc"
    yield root
    if root.exists():
        cli("down", "--dir", str(root), "--wipe")


def _ours(root: Path) -> list[int]:
    return [pid for pid, _, conf in slurm_daemons() if conf and conf.parent == root]


@pytest.mark.timeout(240)
def test_dev_cluster_life_cycle(cluster_dir: Path) -> None:
    base = _free_port_base()
    up = cli("up", "--dir", str(cluster_dir), "--port-base", str(base), "--no-accounting")
    reason = host.refusal(Layout(cluster_dir, Options(run_dir=str(fallback_run_dir(cluster_dir)))),
                          {})
    if reason:
        assert up.returncode == 1 and "Traceback" not in up.stderr and _ours(cluster_dir) == []
        return
    assert up.returncode == 0, up.stderr
    layout = Layout(cluster_dir, Options(accounting=False, port_base=base,
                                         run_dir=str(fallback_run_dir(cluster_dir))))
    assert layout.munge_socket.is_socket()
    ctld = read_pid(layout.pid_file("slurmctld"))
    assert len(_ours(cluster_dir)) == 1 + len(layout.nodes)

    victim = read_pid(layout.pid_file("slurmd-cpu-1"))
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    again = cli("up", "--dir", str(cluster_dir))
    assert again.returncode == 0, again.stderr
    assert "starting slurmd cpu-1" in again.stderr and "slurmctld" not in again.stderr
    assert read_pid(layout.pid_file("slurmctld")) == ctld
    assert read_pid(layout.pid_file("slurmd-cpu-1")) != victim
    print(f"second up (one slurmd restarted): {time.monotonic() - started:.1f} s")

    reshape = cli("up", "--dir", str(cluster_dir), "--nodes-per-partition", "2")
    assert reshape.returncode == 1 and "dev-cluster down` first" in reshape.stderr

    status = cli("status", "--dir", str(cluster_dir))
    assert status.returncode == 0
    for node in layout.nodes:
        assert f"{node.name}" in status.stdout
    assert "h100: up" in status.stdout and "not running" not in status.stdout

    down = cli("down", "--dir", str(cluster_dir))
    assert down.returncode == 0 and _ours(cluster_dir) == []
    assert (cluster_dir / "slurm.conf").exists()
    wiped = cli("down", "--dir", str(cluster_dir), "--wipe")
    assert wiped.returncode == 0 and not cluster_dir.exists() and not layout.run_dir.exists()


@pytest.mark.timeout(60)
def test_wipe_refuses_a_directory_that_is_not_a_dev_cluster(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = cli("down", "--dir", str(tmp_path), "--wipe")
    assert done.returncode == 1 and "refusing to delete" in done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "precious.txt").exists()
