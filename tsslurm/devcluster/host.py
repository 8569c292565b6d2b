"""The machine the dev cluster runs on: may we run here at all, and installing what is missing.

Refuses to touch a machine where a Slurm cluster is already configured or running (a real head
node must never be disturbed by the test command). Installs with apt: `apt-get update` once, then
`apt-get install` of the missing packages only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from tsslurm.devcluster.layout import Layout
from tsslurm.devcluster.processes import DevClusterError, describe, run_checked, slurm_daemons

SYSTEM_CONFS = (Path("/etc/slurm/slurm.conf"), Path("/etc/slurm-llnl/slurm.conf"))
APT_TIMEOUT_S = 900.0

BASE_PACKAGES = {
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
    "slurm-client": "/usr/bin/sbatch",
    "munge": "/usr/sbin/munged",
}
ACCOUNTING_PACKAGES = {
    "slurmdbd": "/usr/sbin/slurmdbd",
    "mariadb-server": "/usr/sbin/mariadbd",
}


def refusal(layout: Layout, environ: Mapping[str, str]) -> str | None:
    """Why the dev cluster must not run on this machine, or None when it may."""
    if os.geteuid() != 0:
        return ("the dev cluster needs root (it installs packages, runs slurmd as root and creates "
                "device files); run it as root in a disposable machine or container")
    for conf in SYSTEM_CONFS:
        if conf.exists():
            return (f"{conf} exists: this machine already has a Slurm cluster configured. The dev "
                    "cluster refuses to run beside it; point the tests at it with "
                    "TSSLURM_SLURM_CONF instead")
    configured = environ.get("SLURM_CONF")
    if configured and Path(configured).resolve() != layout.slurm_conf.resolve():
        return (f"SLURM_CONF={configured} points at another cluster; unset it to run the dev "
                "cluster, or point the tests at that cluster with TSSLURM_SLURM_CONF")
    closed = unsearchable_ancestor(layout.run_dir)
    if closed is not None:
        return (f"{closed} is not searchable by other users (mode {closed.stat().st_mode & 0o777:o})"
                "; munged insists that every directory above its socket is. Choose another "
                "--dir or `chmod o+x` it")
    foreign = [describe(pid, name) for pid, name, conf in slurm_daemons()
               if not is_dev_cluster_conf(conf)]
    if foreign:
        return ("Slurm daemons not started by this dev cluster are running: "
                + "; ".join(foreign) + ". Refusing to start a second cluster beside them")
    return None


def unsearchable_ancestor(path: Path) -> Path | None:
    """The first existing directory above `path` that others cannot traverse, if any."""
    for parent in reversed(path.resolve().parents):
        if parent.is_dir() and not parent.stat().st_mode & 0o001:
            return parent
    return None


def is_dev_cluster_conf(conf: Path | None) -> bool:
    """True for the slurm.conf of a tsslurm dev cluster (this one or another private directory)."""
    return conf is not None and (conf.parent / "cluster.json").is_file()


def other_dev_clusters(layout: Layout) -> list[Path]:
    """Private directories of other tsslurm dev clusters running on this machine."""
    dirs = {conf.parent for _, _, conf in slurm_daemons() if is_dev_cluster_conf(conf)}
    return sorted(d for d in dirs if d.resolve() != layout.root.resolve())


def check_host(layout: Layout, environ: Mapping[str, str]) -> None:
    reason = refusal(layout, environ)
    if reason:
        raise DevClusterError(reason)


def missing_packages(accounting: bool) -> list[str]:
    wanted = {**BASE_PACKAGES, **(ACCOUNTING_PACKAGES if accounting else {})}
    return sorted(name for name, binary in wanted.items() if not Path(binary).exists())


def install(packages: list[str], log: Callable[[str], None]) -> None:
    """apt-get update, then install `packages` without recommends (services are not started here)."""
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise DevClusterError(
            f"missing packages {', '.join(packages)} and no apt-get on this machine: the dev "
            "cluster supports Debian/Ubuntu; install Slurm 22.05+, munge and MariaDB by hand")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(packages)} (apt)")
    run_checked(["apt-get", "update", "-q"], env=env, timeout_s=APT_TIMEOUT_S, what="apt-get update")
    run_checked(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                env=env, timeout_s=APT_TIMEOUT_S, what="apt-get install")
