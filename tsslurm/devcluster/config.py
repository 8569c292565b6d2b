"""The dev cluster's configuration files as text: slurm.conf, gres.conf, slurmdbd.conf.

Pure: no I/O. Facts behind each setting are in ../shared/notes/local-slurm.md (Slurm 22.05, no
systemd, no cgroups, several slurmd on one host, fake GPUs aliasing /dev/null)."""

from __future__ import annotations

from tsslurm.devcluster.layout import (
    CLUSTER_NAME,
    CPU_PARTITION,
    CPUS_PER_NODE,
    GPUS_PER_NODE,
    REAL_MEMORY_MB,
    Layout,
    Node,
)

DB_USER = "slurm"
DB_NAME = "slurm_acct_db"


def slurm_conf(layout: Layout, control_host: str) -> str:
    """slurm.conf for `layout`; `control_host` is this machine's short hostname."""
    lines = _header(layout, control_host) + _scheduling() + _accounting(layout)
    lines += _gathering(layout)
    lines += [_node_line(node) for node in layout.nodes]
    lines += _partition_lines(layout)
    return "\n".join(lines) + "\n"


def _header(layout: Layout, control_host: str) -> list[str]:
    root, run, log = layout.root, layout.run_dir, layout.log_dir
    return [
        "# Written by `tsslurm dev-cluster up`: a private single-host cluster. Do not edit;",
        "# change tsslurm/devcluster/config.py (or the up options) instead.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={control_host}(127.0.0.1)",
        f"SlurmctldPort={layout.ctld_port}",
        f"SlurmdPort={layout.nodes[0].port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={layout.state_dir / 'ctld'}",
        f"SlurmdSpoolDir={layout.state_dir / 'spool' / '%n'}",
        f"SlurmctldPidFile={run / 'slurmctld.pid'}",
        f"SlurmdPidFile={run / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={log / 'slurmctld.log'}",
        f"SlurmdLogFile={log / 'slurmd-%n.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"PlugStackConfig={root / 'plugstack.conf'}",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SlurmdParameters=config_overrides",
        "ReturnToService=1",
        "GresTypes=gpu",
    ]


def _scheduling() -> list[str]:
    return [
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=100",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1",
        "KillWait=5",
        "MinJobAge=300",
        "InactiveLimit=0",
    ]


def _accounting(layout: Layout) -> list[str]:
    if not layout.options.accounting:
        return [
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={layout.log_dir / 'jobcomp.txt'}",
        ]
    return [
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={layout.dbd_port}",
        f"AccountingStoragePass={layout.munge_socket}",
        "AccountingStorageTRES=gres/gpu,gres/gpu:a100,gres/gpu:h100",
    ]


def _gathering(layout: Layout) -> list[str]:
    """Usage sampling: for sacct's figures, and (without cgroups) to kill jobs over their --mem."""
    if layout.options.enforce_memory:
        return ["JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=1",
                "JobAcctGatherParams=OverMemoryKill"]
    if layout.options.accounting:
        return ["JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=30"]
    return ["JobAcctGatherType=jobacct_gather/none"]


def _node_line(node: Node) -> str:
    gres = f" Gres={node.gres}" if node.gres else ""
    return (f"NodeName={node.name} NodeAddr=127.0.0.1 Port={node.port}"
            f" CPUs={CPUS_PER_NODE} RealMemory={REAL_MEMORY_MB}{gres} State=UNKNOWN")


def _partition_lines(layout: Layout) -> list[str]:
    return [
        f"PartitionName={name} Nodes={','.join(n.name for n in nodes)} MaxTime=INFINITE State=UP"
        + (" Default=YES" if name == CPU_PARTITION else "")
        for name, nodes in layout.partitions.items()
    ]


def gres_conf(layout: Layout) -> str:
    """Typed fake GPUs: every GPU node points at the same eight /dev/null aliases."""
    files = f"{layout.dev_dir}/gpu[0-{GPUS_PER_NODE - 1}]"
    lines = ["# Written by `tsslurm dev-cluster up`: fake GPUs (char devices aliasing /dev/null)."]
    lines += [
        f"NodeName={node.name} Name=gpu Type={node.gpu_type} File={files}"
        for node in layout.nodes
        if node.gpu_type
    ]
    return "\n".join(lines) + "\n"


def slurmdbd_conf(layout: Layout, db_password: str) -> str:
    """slurmdbd.conf (must be 0600): slurmdbd on 127.0.0.1 talking to our private MariaDB."""
    return "\n".join([
        "# Written by `tsslurm dev-cluster up`.",
        f"AuthInfo=socket={layout.munge_socket}",
        "AuthType=auth/munge",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={layout.dbd_port}",
        "SlurmUser=root",
        "DebugLevel=info",
        f"LogFile={layout.log_file('slurmdbd')}",
        f"PidFile={layout.pid_file('slurmdbd')}",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={layout.mysql_port}",
        f"StorageUser={DB_USER}",
        f"StoragePass={db_password}",
        f"StorageLoc={DB_NAME}",
    ]) + "\n"


def mysql_bootstrap_sql(db_password: str) -> str:
    """Creates slurmdbd's database user (run once over the root unix socket)."""
    return (
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n"
        "FLUSH PRIVILEGES;\n"
    )
