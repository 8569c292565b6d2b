"""Where everything of the private dev cluster lives, and its shape (nodes, partitions, ports).

Pure: no I/O. One `Layout` value answers every "which path / which port / which node" question,
so the config renderers, the daemon manager and the tests agree by construction."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

DIR_ENV = "TSSLURM_DEVCLUSTER_DIR"
CLUSTER_NAME = "tsslurmdev"
GPUS_PER_NODE = 8
CPUS_PER_NODE = 16
REAL_MEMORY_MB = 1024 * 1024
"""Over-advertised (SlurmdParameters=config_overrides) so 16 jobs of any profile's size fit."""
DEFAULT_PORT_BASE = 16800
"""Far from a real cluster's 6817-6819 and MariaDB's 3306."""

GPU_PARTITIONS = ("a100", "h100")
SPARE_PARTITION = "spare"
"""A one-node a100 partition no product code uses: tests that drain or down a node use it alone."""
CPU_PARTITION = "cpu"
TEST_REASON_PREFIX = "tsslurm-test"
"""Nodes drained or downed with a reason starting so belong to a running test: `up` leaves them."""


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What `up` was asked for; stored in the private dir so a second `up` keeps the same shape."""

    nodes_per_partition: int = 1
    accounting: bool = True
    port_base: int = DEFAULT_PORT_BASE
    enforce_memory: bool = False
    """Kill jobs over their --mem, as a cgroup-enforcing site would."""
    run_dir: str = ""
    """Sockets and pid files when they cannot live in `<root>/run` (see `fallback_run_dir`)."""


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    gpu_type: str | None
    port: int

    @property
    def gres(self) -> str | None:
        return f"gpu:{self.gpu_type}:{GPUS_PER_NODE}" if self.gpu_type else None


@dataclass(frozen=True)
class Layout:
    root: Path
    options: Options

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.root / "gres.conf"

    @property
    def slurmdbd_conf(self) -> Path:
        return self.root / "slurmdbd.conf"

    @property
    def plugstack_conf(self) -> Path:
        return self.root / "plugstack.conf"

    @property
    def options_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files; every directory above it must be world-searchable (munged)."""
        return Path(self.options.run_dir) if self.options.run_dir else self.root / "run"

    @property
    def munge_dir(self) -> Path:
        """The munge key, seed and log: 0700."""
        return self.root / "munge"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def db_dir(self) -> Path:
        return self.root / "db"

    @property
    def dev_dir(self) -> Path:
        """Fake GPU device files (char devices aliasing /dev/null)."""
        return self.root / "dev"

    @property
    def munge_socket(self) -> Path:
        return self.run_dir / "munge.socket"

    @property
    def mysql_socket(self) -> Path:
        return self.run_dir / "mysqld.sock"

    @property
    def db_password_file(self) -> Path:
        return self.munge_dir / "db-password"

    def pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{daemon}.log"

    @property
    def ctld_port(self) -> int:
        return self.options.port_base + 17

    @property
    def dbd_port(self) -> int:
        return self.options.port_base + 19

    @property
    def mysql_port(self) -> int:
        return self.options.port_base + 6

    @property
    def nodes(self) -> list[Node]:
        names = [(p, p, i) for p in GPU_PARTITIONS for i in range(self.options.nodes_per_partition)]
        names += [(SPARE_PARTITION, "a100", 0), (CPU_PARTITION, None, 0)]
        port = self.options.port_base + 21
        nodes = []
        for offset, (partition, gpu, index) in enumerate(names):
            nodes.append(Node(f"{partition}-{index + 1}", partition, gpu, port + offset))
        return nodes

    @property
    def partitions(self) -> dict[str, list[Node]]:
        grouped: dict[str, list[Node]] = {}
        for node in self.nodes:
            grouped.setdefault(node.partition, []).append(node)
        return grouped

    def client_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` plus SLURM_CONF: what a Slurm client (or slurmdbd, which has no -f) needs."""
        return {**base, "SLURM_CONF": str(self.slurm_conf)}


def fallback_run_dir(root: Path) -> Path:
    """Where sockets go when a directory above `root` is private (e.g. a clone under /root):
    a directory of /run named after `root`, so two dev clusters never share one."""
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path("/run") / f"tsslurm-devcluster-{digest}"
