"""The dev cluster's pure parts: its shape, its config files, option handling, and when it
refuses to run. Starting the daemons is exercised by `tsslurm dev-cluster up` (tests/slurm)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from tsslurm.devcluster import config, host
from tsslurm.devcluster.cluster import resolve_layout
from tsslurm.devcluster.layout import Layout, Options, fallback_run_dir

ROOT = Path("/srv/ci/.devcluster")


def layout(**options: object) -> Layout:
    return Layout(ROOT, Options(**options))


def test_shape_has_gpu_partitions_a_spare_and_a_cpu_node() -> None:
    nodes = layout(nodes_per_partition=2).nodes
    assert [n.name for n in nodes] == ["a100-1", "a100-2", "h100-1", "h100-2", "spare-1", "cpu-1"]
    assert [n.gres for n in nodes] == ["gpu:a100:8"] * 2 + ["gpu:h100:8"] * 2 + ["gpu:a100:8", None]
    assert len({n.port for n in nodes}) == len(nodes)


def test_ports_stay_clear_of_a_real_cluster() -> None:
    shaped = layout(nodes_per_partition=8)
    ports = [shaped.ctld_port, shaped.dbd_port, shaped.mysql_port] + [n.port for n in shaped.nodes]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & {6817, 6818, 6819, 3306}


def test_slurm_conf_keeps_everything_in_the_private_directory() -> None:
    text = config.slurm_conf(layout(), "head")
    paths = re.findall(r"=(?:socket=)?(/[^\s,]+)", text)
    assert paths and all(p.startswith(str(ROOT)) or p == "/bin/true" for p in paths)
    assert "/etc/" not in text
    assert "SlurmctldHost=head(127.0.0.1)" in text
    assert f"AuthInfo=socket={ROOT}/run/munge.socket" in text
    assert f"SlurmdPidFile={ROOT}/run/slurmd-%n.pid" in text


def test_slurm_conf_nodes_and_partitions() -> None:
    text = config.slurm_conf(layout(nodes_per_partition=2), "head")
    assert "NodeName=h100-2 NodeAddr=127.0.0.1 Port=16824 CPUs=16" in text
    assert re.search(r"NodeName=h100-2 .*Gres=gpu:h100:8", text)
    assert "PartitionName=a100 Nodes=a100-1,a100-2 " in text
    assert "PartitionName=spare Nodes=spare-1 " in text
    assert re.search(r"PartitionName=cpu Nodes=cpu-1 .*Default=YES", text)
    assert "KillWait=5" in text and "MinJobAge=300" in text
    assert "sched_min_interval=0" in text


def test_accounting_is_slurmdbd_by_default_and_jobcomp_without() -> None:
    with_dbd = config.slurm_conf(layout(), "head")
    assert "AccountingStorageType=accounting_storage/slurmdbd" in with_dbd
    assert "AccountingStoragePort=16819" in with_dbd
    assert f"AccountingStoragePass={ROOT}/run/munge.socket" in with_dbd
    without = config.slurm_conf(layout(accounting=False), "head")
    assert "AccountingStorageType=accounting_storage/none" in without
    assert f"JobCompLoc={ROOT}/log/jobcomp.txt" in without
    assert "AccountingStorageTRES" not in without


def test_memory_enforcement_is_opt_in() -> None:
    assert "OverMemoryKill" not in config.slurm_conf(layout(), "head")
    assert "JobAcctGatherParams=OverMemoryKill" in config.slurm_conf(
        layout(enforce_memory=True, accounting=False), "head")


def test_gres_conf_types_each_gpu_node() -> None:
    text = config.gres_conf(layout())
    assert f"NodeName=h100-1 Name=gpu Type=h100 File={ROOT}/dev/gpu[0-7]" in text
    assert "cpu-1" not in text


def test_slurmdbd_conf_points_at_the_private_mariadb() -> None:
    text = config.slurmdbd_conf(layout(port_base=20000), "s3cret")
    assert "StoragePort=20006" in text and "DbdPort=20019" in text
    assert "StoragePass=s3cret" in text and "StorageHost=127.0.0.1" in text
    assert "s3cret" in config.mysql_bootstrap_sql("s3cret")


def test_options_given_override_those_stored(tmp_path: Path) -> None:
    stored = Options(nodes_per_partition=3, accounting=False, port_base=17000, run_dir="/run/x")
    (tmp_path / "cluster.json").write_bytes(msgspec.json.encode(stored))
    assert resolve_layout(tmp_path).options == stored
    changed = resolve_layout(tmp_path, accounting=True, nodes_per_partition=None)
    assert changed.options == msgspec.structs.replace(stored, accounting=True)


def test_sockets_move_out_of_a_private_tree(tmp_path: Path) -> None:
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    hidden = resolve_layout(private / "repo" / ".devcluster")
    assert hidden.run_dir == fallback_run_dir(hidden.root) and hidden.run_dir.parent == Path("/run")
    assert hidden.munge_socket.parent == hidden.run_dir
    assert fallback_run_dir(hidden.root) != fallback_run_dir(tmp_path / "other")
    open_tree = resolve_layout(Path("/tmp/tsslurm-never-created/dc"))
    assert open_tree.run_dir == Path("/tmp/tsslurm-never-created/dc/run")


@pytest.fixture
def clean_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine with no Slurm of its own: no system config, no foreign daemons, root."""
    monkeypatch.setattr(host, "SYSTEM_CONFS", (tmp_path / "etc-slurm.conf",))
    monkeypatch.setattr(host, "slurm_daemons", list)
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)
    return tmp_path


def test_a_clean_host_is_accepted(clean_host: Path) -> None:
    assert host.refusal(layout(), {}) is None
    assert host.refusal(layout(), {"SLURM_CONF": str(ROOT / "slurm.conf")}) is None


def test_a_configured_cluster_is_refused(clean_host: Path) -> None:
    (clean_host / "etc-slurm.conf").write_text("ClusterName=prod\n")
    assert "already has a Slurm cluster" in host.refusal(layout(), {})


def test_slurm_conf_pointing_elsewhere_is_refused(clean_host: Path) -> None:
    assert "points at another cluster" in host.refusal(layout(), {"SLURM_CONF": "/etc/x.conf"})


def test_foreign_daemons_are_refused_and_other_dev_clusters_are_not(
        clean_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = clean_host / "other-dev"
    other.mkdir()
    (other / "cluster.json").write_text("{}")
    monkeypatch.setattr(host, "slurm_daemons", lambda: [(11, "slurmd", other / "slurm.conf")])
    assert host.refusal(layout(), {}) is None
    assert host.other_dev_clusters(layout()) == [other]
    monkeypatch.setattr(host, "slurm_daemons", lambda: [(12, "slurmctld", None)])
    monkeypatch.setattr(host, "describe", lambda pid, name: f"{name} (pid {pid})")
    assert "slurmctld (pid 12)" in host.refusal(layout(), {})


def test_not_root_is_refused(clean_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    assert "needs root" in host.refusal(layout(), {})


def test_missing_packages_follow_the_accounting_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "BASE_PACKAGES", {"slurmd": "/nonexistent/slurmd"})
    monkeypatch.setattr(host, "ACCOUNTING_PACKAGES", {"slurmdbd": "/nonexistent/slurmdbd"})
    assert host.missing_packages(accounting=False) == ["slurmd"]
    assert host.missing_packages(accounting=True) == ["slurmd", "slurmdbd"]


def test_no_apt_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", lambda name: None)
    with pytest.raises(host.DevClusterError, match="no apt-get"):
        host.install(["slurmd"], print)
