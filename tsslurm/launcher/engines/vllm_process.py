"""The vLLM engine-core processes a VllmEngine starts: the environment they inherit at spawn,
pinning them to CPUs, how they ended, and reaping them so none outlives its engine - not even
when the launcher is killed outright (an orphaned engine core spins on a CPU forever), which a
small watchdog process takes care of."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tsslurm.launcher.engines.base import EngineError

log = logging.getLogger(__name__)


WATCHDOG_MARK = "tsslurm-engine-watchdog"
_WATCHDOG = f"""# {WATCHDOG_MARK}
import os, signal, sys
def started(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
sys.stdin.buffer.read()
for target in sys.argv[1:]:
    pid, start = target.split(":")
    if started(int(pid)) == start:
        os.kill(int(pid), signal.SIGKILL)
"""
"""Waits for EOF on stdin (the launcher closed it, or died); then kills each engine process that
is still the one it was given (same start time, so a reused pid is never hit)."""


def child_pids() -> set[int]:
    """This process's children, but for multiprocessing's resource tracker (it serves them all)
    and engine watchdogs."""
    import psutil

    pids = set()
    for child in psutil.Process().children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in command and WATCHDOG_MARK not in command:
            pids.add(child.pid)
    return pids


class Watchdog:
    """Kills the engine processes if this process dies without shutting them down."""

    def __init__(self, pids: Sequence[int]) -> None:
        targets = [f"{pid}:{_start_time(pid)}" for pid in pids]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *targets], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """After the engine processes are gone: let the watchdog exit (it then kills nothing)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "gone"


def exit_status(pid: int) -> str:
    """How an engine process ended ("killed by SIGKILL", "exited with 1"), reaping it; or
    "still running" when it is alive but vLLM lost it."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exited (its log above says why)"
    if reaped == 0:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"


def pin_process(pid: int, cpus: Sequence[int]) -> None:
    """Pin every thread of a process to `cpus`. vLLM's NIXL worker on CPU moves the model thread
    to the last core of each NUMA node, so two engines on one machine would share a core."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        raise EngineError(f"the vLLM engine process {pid} exited during start") from None
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            continue
        except OSError as error:
            raise EngineError(f"cannot bind the engine to CPUs {list(cpus)}: {error.strerror} "
                              f"(this process may use {sorted(os.sched_getaffinity(0))})") from None


def reap(pids: Sequence[int], timeout_s: float = 10.0, kill_wait_s: float = 5.0) -> None:
    """Wait for the engine processes to exit (reaping them); kill what is left after timeout_s."""
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        log.warning("vLLM engine process %d did not exit; killing it", process.pid)
        process.kill()
    psutil.wait_procs(alive, timeout=kill_wait_s)


class environment:
    """Set variables for the duration of a block (the engine core inherits them at spawn)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
