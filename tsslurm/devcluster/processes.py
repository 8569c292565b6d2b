"""Daemons of the dev cluster as processes: start them, find them through their pid files, stop them.

A process counts as ours only when its pid file names it AND its command line or its SLURM_CONF
mentions our private directory, so a recycled pid or a real cluster's daemon is never signalled.
Nothing here stops a process by name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tsslurm.errors import UserError

SLURM_DAEMONS = ("slurmctld", "slurmd", "slurmdbd")
STOP_GRACE_S = 5.0


class DevClusterError(UserError):
    """The dev cluster cannot be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class Daemon:
    """One daemon we run: its display name, its pid file, and the text that proves it is ours."""

    name: str
    pid_file: Path
    marker: str


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_mentions(pid: int, marker: str) -> bool:
    """True when the process's command line or its SLURM_CONF contains `marker`."""
    return marker in _cmdline(pid) or marker in _environ(pid).get("SLURM_CONF", "")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running_pid(daemon: Daemon) -> int | None:
    """The daemon's pid if its pid file names a live process of ours, else None."""
    pid = read_pid(daemon.pid_file)
    if pid is None or not _alive(pid) or not process_mentions(pid, daemon.marker):
        return None
    return pid


def slurm_daemons() -> list[tuple[int, str, Path | None]]:
    """(pid, name, slurm.conf path if known) of every live Slurm daemon on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        pid = int(entry.name)
        if comm in SLURM_DAEMONS and _alive(pid):
            found.append((pid, comm, _conf_of(pid)))
    return found


def _conf_of(pid: int) -> Path | None:
    """The slurm.conf a daemon reads: its `-f` argument, else its SLURM_CONF."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "-f" in argv[:-1]:
        return Path(argv[argv.index("-f") + 1])
    configured = _environ(pid).get("SLURM_CONF")
    return Path(configured) if configured else None


def describe(pid: int, name: str) -> str:
    return f"{name} (pid {pid}: {_cmdline(pid).strip() or '?'})"


def run_checked(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                timeout_s: float = 60.0, stdin: str | None = None, what: str = "") -> str:
    """Run a set-up command to completion; a failure becomes a DevClusterError with its output."""
    label = what or argv[0]
    try:
        done = subprocess.run(list(argv), env=dict(env) if env else None, input=stdin,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise DevClusterError(f"{label}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise DevClusterError(f"{label}: `{' '.join(argv)}` timed out after {timeout_s:g} s") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise DevClusterError(f"{label} failed (exit {done.returncode}): {' '.join(argv)}\n{output}")
    return done.stdout


def spawn_detached(argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a foreground-only daemon in its own session with output to `log_file`; returns its pid."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=dict(env) if env else None, start_new_session=True)
    return process.pid


def stop_all(group: Sequence[Daemon], grace_s: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM every running daemon of `group`, SIGKILL those still alive after `grace_s`.

    Returns the names of the daemons that were running."""
    running = {d.name: (d, pid) for d in group if (pid := running_pid(d)) is not None}
    for _, pid in running.values():
        _signal(pid, signal.SIGTERM)
    pids = [pid for _, pid in running.values()]
    if not wait_until(lambda: not any(_alive(pid) for pid in pids), grace_s):
        for pid in pids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), grace_s)
    for daemon in group:
        daemon.pid_file.unlink(missing_ok=True)
    return sorted(running)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `condition()` until it is true or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
