"""`tsslurm dev-cluster up|down|status`: the private single-host Slurm cluster's life cycle.

`up` is idempotent: it installs what is missing, writes the config, starts every daemon that is
not running (a second `up` restarts only what died), brings drained nodes back and waits until
every node answers. `down` cancels every job, then stops only the daemons it started (pid files,
SIGTERM then SIGKILL); `--wipe` also removes the private directory."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tsslurm.devcluster import host, services
from tsslurm.devcluster.layout import (
    CLUSTER_NAME,
    DIR_ENV,
    TEST_REASON_PREFIX,
    Layout,
    Options,
    fallback_run_dir,
)
from tsslurm.devcluster.processes import Daemon, DevClusterError, running_pid, stop_all, wait_until
from tsslurm.slurm.adapter import SlurmAdapter, SlurmError
from tsslurm.slurm.parse import NodeInfo

READY_TIMEOUT_S = 60.0
SERVING_STATES = frozenset({"idle", "mixed", "allocated", "completing"})
HEALABLE_STATES = frozenset({"drained", "draining", "down", "fail", "failing"})
REPO_ROOT = Path(__file__).resolve().parents[2]
Log = Callable[[str], None]


def default_root() -> Path:
    """`$TSSLURM_DEVCLUSTER_DIR`, else `<repo>/.devcluster`."""
    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".devcluster"


def resolve_layout(root: Path | None, **wanted: object) -> Layout:
    """The layout at `root`: options stored by an earlier `up`, overridden by those given."""
    base = (root or default_root()).resolve()
    stored = _stored_options(base / "cluster.json")
    changes = {key: value for key, value in wanted.items() if value is not None}
    options = msgspec.structs.replace(stored or Options(), **changes)
    if not options.run_dir and host.unsearchable_ancestor(base / "run"):
        options = msgspec.structs.replace(options, run_dir=str(fallback_run_dir(base)))
    return Layout(base, options)


def _stored_options(path: Path) -> Options | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Options)
    except (OSError, msgspec.DecodeError):
        return None


def adapter_for(layout: Layout, timeout_s: float = 10.0) -> SlurmAdapter:
    return SlurmAdapter(layout.client_env(os.environ), timeout_s=timeout_s)


def up(layout: Layout, log: Log) -> float:
    """Bring the cluster up (or back to health); returns the seconds it took."""
    started = time.monotonic()
    host.check_host(layout, os.environ)
    _refuse_port_clash(layout)
    _refuse_reshape(layout)
    host.install(host.missing_packages(layout.options.accounting), log)
    services.prepare_tree(layout)
    changed = services.write_configs(layout, socket.gethostname().split(".")[0])
    layout.options_file.write_bytes(msgspec.json.encode(layout.options))
    if changed and running_pid(services.daemon(layout, "slurmctld")):
        log("slurm.conf changed: scontrol reconfigure")
        adapter_for(layout).reconfigure()
    _start_daemons(layout, log)
    _await_nodes(layout, log)
    return time.monotonic() - started


def _refuse_port_clash(layout: Layout) -> None:
    """Another dev cluster may run beside this one, on ports of its own."""
    for other in host.other_dev_clusters(layout):
        theirs = Layout(other, _stored_options(other / "cluster.json") or Options())
        if _ports(theirs) & _ports(layout):
            raise DevClusterError(
                f"the dev cluster at {other} uses ports {theirs.options.port_base}+; give this "
                f"one another --port-base (e.g. {theirs.options.port_base + 1000})")


def _ports(layout: Layout) -> set[int]:
    return {layout.mysql_port, layout.ctld_port, layout.dbd_port} | {n.port for n in layout.nodes}


def _refuse_reshape(layout: Layout) -> None:
    """Changing the nodes, ports or accounting of a running cluster needs `down` first."""
    stored = _stored_options(layout.options_file)
    if stored is None or stored == layout.options:
        return
    running = [d.name for d in _all_daemons(layout) if running_pid(d)]
    if running:
        raise DevClusterError(
            f"the dev cluster at {layout.root} runs with {_describe(stored)}; asked for "
            f"{_describe(layout.options)}. Run `tsslurm dev-cluster down` first")


def _describe(options: Options) -> str:
    accounting = "accounting" if options.accounting else "no accounting"
    return (f"{options.nodes_per_partition} node(s) per partition, {accounting}, "
            f"port base {options.port_base}")


def _start_daemons(layout: Layout, log: Log) -> None:
    services.start_munged(layout, log)
    if layout.options.accounting:
        env = layout.client_env(os.environ)
        services.start_mysqld(layout, log)
        services.start_slurmdbd(layout, env, log)
        if adapter_for(layout).register_cluster(CLUSTER_NAME):
            log(f"registered cluster {CLUSTER_NAME} with slurmdbd")
    services.start_slurmctld(layout, log)
    for node in layout.nodes:
        services.start_slurmd(layout, node, log)


def _await_nodes(layout: Layout, log: Log) -> None:
    """Poll sinfo until every node serves, resuming nodes left drained or down (except those a
    test holds); fail with the daemons' log tails if that takes too long."""
    slurm = adapter_for(layout, timeout_s=5.0)
    wanted = {node.name for node in layout.nodes}
    resumed: set[str] = set()

    def ready() -> bool:
        nodes = [n for n in _nodes_or_empty(slurm) if n.name in wanted]
        for node in nodes:
            if _needs_resume(node) and node.name not in resumed:
                log(f"resuming {node.name} ({node.state}: {node.reason or 'no reason'})")
                _resume(slurm, node.name)
                resumed.add(node.name)
        return {n.name for n in nodes if _settled(n)} == wanted

    if not wait_until(ready, READY_TIMEOUT_S, interval_s=0.2):
        raise DevClusterError(_not_ready_message(layout, _nodes_or_empty(slurm)))


def _held_by_test(node: NodeInfo) -> bool:
    return node.reason.startswith(TEST_REASON_PREFIX)


def _needs_resume(node: NodeInfo) -> bool:
    return node.responding and node.state in HEALABLE_STATES and not _held_by_test(node)


def _settled(node: NodeInfo) -> bool:
    return node.responding and (node.state in SERVING_STATES or _held_by_test(node))


def _resume(slurm: SlurmAdapter, name: str) -> None:
    try:
        slurm.set_node_state(name, "RESUME")
    except SlurmError as error:
        raise DevClusterError(f"could not resume node {name}: {error}") from None


def _nodes_or_empty(slurm: SlurmAdapter) -> list[NodeInfo]:
    try:
        return slurm.nodes()
    except SlurmError:
        return []


def _not_ready_message(layout: Layout, nodes: list[NodeInfo]) -> str:
    states = ", ".join(f"{n.name}={n.state}{'' if n.responding else '*'}" for n in nodes) or "none"
    tails = [services.log_tail(layout.log_file("slurmctld"))]
    tails += [services.log_tail(layout.log_file(f"slurmd-{node.name}"), 5) for node in layout.nodes]
    return (f"the dev cluster's nodes did not all become idle within {READY_TIMEOUT_S:g} s "
            f"(nodes: {states})\n" + "\n".join(tails))


def down(layout: Layout, wipe: bool, log: Log) -> None:
    """Cancel every job, stop our daemons (pid files only), and with `wipe` delete the directory."""
    if not layout.root.exists():
        log(f"no dev cluster at {layout.root}")
        return
    if running_pid(services.daemon(layout, "slurmctld")):
        _cancel_everything(adapter_for(layout), log)
    daemons = _all_daemons(layout)
    for group in (_named(daemons, "slurmd-", "slurmctld"), _named(daemons, "slurmdbd"),
                  _named(daemons, "mysqld"), _named(daemons, "munged")):
        stopped = stop_all(group, grace_s=15.0 if group and group[0].name == "mysqld" else 5.0)
        if stopped:
            log(f"stopped {', '.join(stopped)}")
    if wipe:
        _wipe(layout, log)


def _cancel_everything(slurm: SlurmAdapter, log: Log) -> None:
    try:
        live = [job.job_id for job in slurm.jobs() if not job.final]
        if live:
            log(f"cancelling {len(live)} job(s)")
            slurm.cancel(live)
            wait_until(lambda: not any(j.running or j.pending for j in slurm.jobs()), 15.0, 0.2)
    except SlurmError as error:
        log(f"could not cancel jobs ({error}); stopping the daemons anyway")


def _all_daemons(layout: Layout) -> list[Daemon]:
    """Every daemon with a pid file in our run directory (also nodes of an earlier shape)."""
    names = {d.name for d in services.daemons(layout)}
    if layout.run_dir.exists():
        names |= {p.stem for p in layout.run_dir.glob("*.pid")}
    return [services.daemon(layout, name) for name in sorted(names)]


def _named(daemons: list[Daemon], *prefixes: str) -> list[Daemon]:
    return [d for d in daemons if d.name.startswith(prefixes)]


def _wipe(layout: Layout, log: Log) -> None:
    if not layout.options_file.exists():
        raise DevClusterError(f"{layout.root} has no cluster.json: not a dev cluster directory, "
                              "refusing to delete it")
    shutil.rmtree(layout.root)
    if layout.options.run_dir:
        shutil.rmtree(layout.run_dir, ignore_errors=True)
    log(f"removed {layout.root}")


def status(layout: Layout) -> str:
    """Daemons, nodes and partitions as text."""
    if not layout.options_file.exists():
        return f"no dev cluster at {layout.root}: `tsslurm dev-cluster up` creates one"
    lines = [f"dev cluster at {layout.root} ({_describe(layout.options)})",
             f"SLURM_CONF={layout.slurm_conf}", "daemons:"]
    for daemon in _all_daemons(layout):
        pid = running_pid(daemon)
        lines.append(f"  {daemon.name:<20} {'pid ' + str(pid) if pid else 'not running'}")
    if not running_pid(services.daemon(layout, "slurmctld")):
        return "\n".join(lines + ["slurmctld is not running: `tsslurm dev-cluster up`"])
    slurm = adapter_for(layout, timeout_s=5.0)
    lines.append("nodes:")
    lines += [f"  {n.name:<10} {n.state}{'' if n.responding else '*':<1} {','.join(n.partitions):<8}"
              f" cpus={n.cpus} gres={n.gres or '-'} {n.reason}" for n in _nodes_or_empty(slurm)]
    lines.append("partitions:")
    try:
        lines += [f"  {p.name}{'*' if p.default else ''}: {'up' if p.available else 'down'}, "
                  f"nodes {','.join(p.nodes)}" for p in slurm.partitions()]
    except SlurmError as error:
        lines.append(f"  (sinfo failed: {error})")
    return "\n".join(lines)
