"""Talking to a deployment from outside its broker: `--detach` (the broker as a daemon),
`--broker-in-job` (the broker itself in a small CPU Slurm job), `tsslurm down` and
`tsslurm status`.

A running broker is asked to stop through the control file in its state directory (it reads it
every tick, wherever it runs); its answers are status.json and the connection file. With the
broker dead, `down` cancels the jobs recorded in its SQLite store (and any live job of the
deployment the backend finds) directly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tsslurm.broker import broker_job
from tsslurm.broker.autoscaler import Control, write_control
from tsslurm.broker.backends import SlurmBackend
from tsslurm.broker.local_jobs import LocalBackend
from tsslurm.broker.status import Status, read_status, render
from tsslurm.broker.store import OPEN_JOB_STATES, JobRecord, Store, read_jobs
from tsslurm.broker.up import UpOptions, resolve
from tsslurm.errors import UserError
from tsslurm.slurm.adapter import SlurmAdapter

STALE_AFTER_S = 15.0
TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def up_argv(options: UpOptions, **changes: object) -> list[str]:
    """The `tsslurm up` command line that runs `options` in the foreground."""
    chosen = msgspec.structs.replace(options, detach=False, broker_in_job=False, **changes)
    argv = [TSSLURM, "up", "--profile", chosen.profile, "--log-level", chosen.log_level]
    for flag, value in (("--backend", chosen.backend), ("--policy", chosen.policy),
                        ("--state-dir", chosen.state_dir), ("--job-prefix", chosen.job_prefix),
                        ("--metrics-port", chosen.metrics_port)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--demo"] if chosen.demo else [])


def broker_alive(root: Path, status: Status | None) -> bool:
    """The deployment's broker runs: its pid here, or (in a job elsewhere) a fresh status."""
    if status is None:
        return False
    if status.phase == "stopped":
        return False
    if status.host == socket.gethostname():
        return _pid_alive(status.pid)
    return time.time() - status.updated_at < STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until_serving(root: Path, process: Callable[[], int | None] | None,
                       timeout_s: float, since: float) -> Status:
    """The first status written after `since` (fails when `process` exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(root)
        if status is not None and status.updated_at >= since and status.phase == "serving":
            return status
        if process is not None and process() is not None:
            raise UserError(f"the broker exited before serving; see {root / 'broker.log'}:\n"
                            + _tail(root / "broker.log"))
        time.sleep(0.2)
    raise UserError(f"the broker did not report serving within {timeout_s:.0f} s; see "
                    f"{root / 'broker.log'}")


def detach(options: UpOptions, say: Callable[[str], None], timeout_s: float = 300.0) -> Status:
    """Run `tsslurm up` as a daemon (its own session, output in <state>/broker.log)."""
    root = resolve(options).root
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    since = time.time()
    argv = up_argv(options, profile=resolve(options).profile_path, state_dir=str(root))
    with open(root / "broker.log", "ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    status = wait_until_serving(root, process.poll, timeout_s, since)
    say(f"{status.deployment} up in the background (broker pid {status.pid}, {status.backend} "
        f"backend: {status.backend_why}); `tsslurm status`, `tsslurm down`")
    return status


def broker_in_job(options: UpOptions, say: Callable[[str], None],
                  timeout_s: float = 300.0) -> Status:
    """Submit the broker itself as a CPU Slurm job; wait until it serves."""
    deployment = resolve(options)
    root = deployment.root
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = options.job_prefix or f"tsslurm-{deployment.profile.deployment}"
    command = up_argv(options, backend=options.backend or "slurm", job_prefix=prefix,
                      profile=deployment.profile_path, state_dir=str(root))
    since = time.time()
    record = broker_job.submit(root, f"{prefix}-broker", options.broker_partition,
                               options.broker_time, command)
    job_id = record.job_id
    adapter = broker_job.adapter_for(record)
    say(f"submitted the broker as Slurm job {job_id} on partition {options.broker_partition}")

    def ended() -> int | None:
        status = adapter.poll([job_id]).statuses.get(job_id)
        return 1 if status is not None and status.final else None

    status = wait_until_serving(root, ended, timeout_s, since)
    say(f"{status.deployment} up: broker in job {job_id} on {status.host}, clients "
        f"{status.client_address} (the connection file in {root} tells clients where)")
    return status


def down(root: Path, now: bool, say: Callable[[str], None], timeout_s: float = 900.0) -> None:
    status = read_status(root)
    if broker_alive(root, status):
        _ask_broker(root, now, say, timeout_s)
    else:
        say("no broker is running: cancelling the deployment's recorded jobs directly")
        _cancel_recorded(root, say)
    broker_job.end(root, say)


def _ask_broker(root: Path, now: bool, say: Callable[[str], None], timeout_s: float) -> None:
    write_control(root, Control("down", now))
    say("asked the broker to " + ("cancel every job and stop" if now
                                  else "drain and cancel every job, then stop"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(root)
        if not broker_alive(root, status):
            say("the deployment is down")
            return
        time.sleep(0.2)
    raise UserError(f"the broker did not stop within {timeout_s:.0f} s; `tsslurm down --now`, "
                    f"or see {root / 'broker.log'}")


def _cancel_recorded(root: Path, say: Callable[[str], None]) -> None:
    database = root / "broker.sqlite"
    if not database.exists():
        say(f"nothing recorded in {root}")
        return
    store = Store(database)
    settings = store.deployment()
    backend = _backend_for(root, settings)
    records = {job.job_id: job for job in read_jobs(database, OPEN_JOB_STATES)}
    live = {job.job_id for job in backend.discover()}
    ids = sorted(set(records) | live)
    errors = backend.cancel_now(ids) if ids else []
    for message in errors:
        say(f"warning: {message}")
    store.start()
    for job_id in ids:
        record = records.get(job_id)
        store.put_job(JobRecord(job_id=job_id, role=record.role if record else "?",
                                partition=record.partition if record else "?", state="ended",
                                ended_at=time.time(), reason="tsslurm down (no broker)"))
    store.close()
    say(f"cancelled {len(ids)} job(s){': ' + ', '.join(ids) if ids else ''}")


def _backend_for(root: Path, settings: dict[str, str]) -> SlurmBackend | LocalBackend:
    if settings.get("backend") == "slurm":
        conf = settings.get("slurm_conf")
        adapter = SlurmAdapter.for_conf(conf) if conf else SlurmAdapter()
        return SlurmBackend(adapter, profile_path=settings.get("profile_path", ""),
                            state_dir=root, name_prefix=settings.get("job_prefix", "tsslurm"))
    return LocalBackend(profile_path=settings.get("profile_path", ""), state_dir=root)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def status_report(root: Path, as_json: bool) -> str:
    """What `tsslurm status` prints: the last status.json, as text or JSON (with `alive`)."""
    status = read_status(root)
    if status is None:
        raise UserError(f"no deployment status in {root}: is it up? (`tsslurm up`)")
    alive = broker_alive(root, status)
    if as_json:
        data = msgspec.to_builtins(status)
        return msgspec.json.encode({**data, "alive": alive}).decode()
    return render(status, alive=alive)
