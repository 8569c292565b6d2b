"""Starting each daemon of the dev cluster inside its private directory: munged, MariaDB, slurmdbd,
slurmctld and one slurmd per fake node (each under `unshare --uts` with its own hostname).

Every start is idempotent: a daemon already running (per its pid file) is left alone."""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from tsslurm.devcluster import config
from tsslurm.devcluster.layout import GPUS_PER_NODE, Layout, Node
from tsslurm.devcluster.processes import (
    Daemon,
    DevClusterError,
    run_checked,
    running_pid,
    spawn_detached,
    wait_until,
)

START_TIMEOUT_S = 30.0
Log = Callable[[str], None]


def daemons(layout: Layout) -> list[Daemon]:
    """Every daemon of this layout, in start order."""
    marker = str(layout.root)
    names = ["munged"] + (["mysqld", "slurmdbd"] if layout.options.accounting else [])
    names += ["slurmctld"] + [f"slurmd-{node.name}" for node in layout.nodes]
    return [Daemon(name, layout.pid_file(name), marker) for name in names]


def daemon(layout: Layout, name: str) -> Daemon:
    return Daemon(name, layout.pid_file(name), str(layout.root))


def prepare_tree(layout: Layout) -> None:
    """Directories (with the modes munged insists on), fake GPU devices, keys and passwords."""
    for path, mode in [(layout.root, 0o755), (layout.run_dir, 0o755), (layout.munge_dir, 0o700),
                       (layout.log_dir, 0o755), (layout.state_dir / "ctld", 0o700),
                       (layout.state_dir / "spool", 0o755), (layout.db_dir, 0o700),
                       (layout.dev_dir, 0o755)]:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    _fake_gpus(layout.dev_dir)
    _secret_file(layout.munge_dir / "munge.key", lambda: secrets.token_bytes(1024), 0o400)
    _secret_file(layout.db_password_file, lambda: secrets.token_hex(16).encode(), 0o600)
    layout.plugstack_conf.touch()


def _fake_gpus(dev_dir: Path) -> None:
    null = os.stat("/dev/null").st_rdev
    for index in range(GPUS_PER_NODE):
        path = dev_dir / f"gpu{index}"
        if not path.exists():
            os.mknod(path, 0o666 | stat.S_IFCHR, null)


def _secret_file(path: Path, make: Callable[[], bytes], mode: int) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(make())


def db_password(layout: Layout) -> str:
    return layout.db_password_file.read_text().strip()


def write_configs(layout: Layout, control_host: str) -> bool:
    """Write slurm.conf, gres.conf (and slurmdbd.conf); True when slurm.conf changed."""
    changed = _write_if_changed(layout.slurm_conf, config.slurm_conf(layout, control_host), 0o644)
    _write_if_changed(layout.gres_conf, config.gres_conf(layout), 0o644)
    if layout.options.accounting:
        text = config.slurmdbd_conf(layout, db_password(layout))
        _write_if_changed(layout.slurmdbd_conf, text, 0o600)
    return changed


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    path.chmod(mode)
    return True


def start_munged(layout: Layout, log: Log) -> None:
    if running_pid(daemon(layout, "munged")):
        return
    log("starting munged")
    run_checked([
        "munged", f"--socket={layout.munge_socket}", f"--key-file={layout.munge_dir / 'munge.key'}",
        f"--pid-file={layout.pid_file('munged')}", f"--log-file={layout.log_file('munged')}",
        f"--seed-file={layout.munge_dir / 'munged.seed'}",
    ], what="munged")
    _await_daemon(layout, "munged", lambda: layout.munge_socket.exists())


def start_mysqld(layout: Layout, log: Log) -> None:
    if running_pid(daemon(layout, "mysqld")):
        return
    datadir = layout.db_dir / "data"
    if not (datadir / "mysql").exists():
        log("initialising MariaDB")
        _init_datadir(datadir)
    log("starting MariaDB")
    spawn_detached([
        "mariadbd", "--no-defaults", f"--datadir={datadir}", f"--socket={layout.mysql_socket}",
        f"--pid-file={layout.pid_file('mysqld')}", f"--port={layout.mysql_port}",
        "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
        f"--log-error={layout.log_file('mysqld')}", "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=16M", "--performance-schema=OFF",
    ], layout.log_file("mysqld"))
    _await_daemon(layout, "mysqld", lambda: _port_open(layout.mysql_port))
    _create_db_user(layout)


def _init_datadir(datadir: Path) -> None:
    run_checked([
        "mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
        "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve",
    ], timeout_s=120, what="mariadb-install-db")


def _create_db_user(layout: Layout) -> None:
    """Once per datadir: slurmdbd's own user, over root's unix-socket login."""
    done = layout.db_dir / "user-created"
    if done.exists():
        return
    run_checked(["mariadb", "--no-defaults", f"--socket={layout.mysql_socket}", "-u", "root"],
                stdin=config.mysql_bootstrap_sql(db_password(layout)), what="creating the db user")
    done.touch()


def start_slurmdbd(layout: Layout, env: Mapping[str, str], log: Log) -> None:
    if running_pid(daemon(layout, "slurmdbd")):
        return
    log("starting slurmdbd")
    run_checked(["slurmdbd"], env=env, what="slurmdbd")
    _await_daemon(layout, "slurmdbd", lambda: _port_open(layout.dbd_port))


def start_slurmctld(layout: Layout, log: Log) -> None:
    if running_pid(daemon(layout, "slurmctld")):
        return
    log("starting slurmctld")
    run_checked(["slurmctld", "-i", "-f", str(layout.slurm_conf)], what="slurmctld")
    _await_daemon(layout, "slurmctld", lambda: _port_open(layout.ctld_port))


def start_slurmd(layout: Layout, node: Node, log: Log) -> None:
    name = f"slurmd-{node.name}"
    if running_pid(daemon(layout, name)):
        return
    log(f"starting slurmd {node.name}")
    (layout.state_dir / "spool" / node.name).mkdir(exist_ok=True)
    inner = f'hostname {node.name} && exec slurmd -N {node.name} -f "$1"'
    run_checked(["unshare", "--uts", "sh", "-c", inner, "sh", str(layout.slurm_conf)],
                what=f"slurmd {node.name}")
    _await_daemon(layout, name, lambda: _port_open(node.port))


def _await_daemon(layout: Layout, name: str, ready: Callable[[], bool]) -> None:
    """Wait for the pid file to name a live process of ours and for `ready()`, or fail with the log."""
    def up() -> bool:
        return running_pid(daemon(layout, name)) is not None and ready()

    if not wait_until(up, START_TIMEOUT_S):
        raise DevClusterError(f"{name} did not come up within {START_TIMEOUT_S:g} s\n"
                              + log_tail(layout.log_file(name)))


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(tail)
