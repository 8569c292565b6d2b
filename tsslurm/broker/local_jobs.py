"""The local job backend: workers as local processes (`python -m tsslurm.launcher`) instead of
Slurm jobs, behind the same `JobBackend` interface and thread as the Slurm one (backends.py).
A job's record lives under `<state_dir>/local-jobs/`, so a later broker can re-adopt it, and
Slurm's time-limit behaviour is kept: SIGUSR1 before the limit, SIGTERM at it (TIMEOUT), SIGKILL
a KillWait later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from tsslurm.broker.backends import BackendThread, Discovered, Poll, Submitted, warning_lead_s
from tsslurm.launcher.settings import ENV_JOB_ID, launcher_env
from tsslurm.profile.schema import Partition
from tsslurm.slurm.parse import JobStatus

LOCAL_KILL_AFTER_S = 10.0
"""A local worker still alive this long after SIGTERM gets SIGKILL (Slurm's KillWait)."""


class _LocalJob(msgspec.Struct, frozen=True):
    job_id: str
    pid: int
    role: str
    partition: str
    started_at: float
    time_limit_s: float
    warning_s: float


class LocalBackend(BackendThread):
    """Workers as local processes (`python -m tsslurm.launcher`), each in its own session so a
    Ctrl-C of `tsslurm up` reaches only the broker (which drains them), and a broker that dies
    leaves them running for the next one to re-adopt. A job's record (pid, role, partition, time
    limit) is a file under `<state_dir>/local-jobs/`. The partition's time limit is kept as Slurm
    would: SIGUSR1 `warning_s` before it, SIGTERM at it (state TIMEOUT)."""

    kind = "local"

    def __init__(self, *, profile_path: str, state_dir: Path, poll_s: float = 0.5,
                 env: dict[str, str] | None = None):
        super().__init__(poll_s)
        self.profile_path = profile_path
        self.state_dir = state_dir
        self.jobs_dir = state_dir / "local-jobs"
        self.log_dir = state_dir / "logs"
        self.base_env = {k: v for k, v in (os.environ if env is None else env).items()
                         if not k.startswith(("SLURM_", "SBATCH_", "TSSLURM_"))}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._ends: dict[str, str] = {}
        """job id -> the final state our own signal gave it (CANCELLED, TIMEOUT)."""
        self._signalled: dict[str, float] = {}
        """job id -> when it got SIGTERM."""
        self._warned: set[str] = set()
        self._counter = self._highest_id()

    def _highest_id(self) -> int:
        numbers = [int(p.stem.split("-")[-1]) for p in self.jobs_dir.glob("local-*.json")
                   if p.stem.split("-")[-1].isdigit()]
        return max(numbers, default=0)

    def _do_submit(self, token: str, role: str, partition: Partition) -> None:
        self._counter += 1
        job_id = f"local-{self._counter}"
        try:
            job = self._spawn(job_id, role, partition)
        except OSError as error:
            self._report_submission(Submitted(token, None, f"cannot start a local worker: "
                                                           f"{error}", time.time()))
            return
        self._record(job)
        self._report_submission(Submitted(token, job_id, None, time.time()))

    def _spawn(self, job_id: str, role: str, partition: Partition) -> _LocalJob:
        self.jobs_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        env = {**self.base_env, **launcher_env(role, self.profile_path, partition.name,
                                               str(self.state_dir), job_id=job_id)}
        with open(self.log_dir / f"{job_id}-{role}.log", "ab") as output:
            process = subprocess.Popen([sys.executable, "-m", "tsslurm.launcher"], env=env,
                                       stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self._processes[job_id] = process
        return _LocalJob(job_id, process.pid, role, partition.name, time.time(),
                         partition.time_limit_s, warning_lead_s(partition.time_limit_s))

    def _record(self, job: _LocalJob) -> None:
        path = self.jobs_dir / f"{job.job_id}.json"
        path.write_bytes(msgspec.json.encode(job))

    def _load(self, job_id: str) -> _LocalJob | None:
        try:
            return msgspec.json.decode((self.jobs_dir / f"{job_id}.json").read_bytes(),
                                       type=_LocalJob)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def _do_cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            job = self._load(job_id)
            if job is not None and self._alive(job):
                self._ends.setdefault(job_id, "CANCELLED")
                self._signal(job, signal.SIGTERM)

    def _signal(self, job: _LocalJob, signum: int) -> None:
        try:
            os.kill(job.pid, signum)
        except ProcessLookupError:
            return
        if signum == signal.SIGTERM:
            self._signalled.setdefault(job.job_id, time.time())

    def forget(self, job_ids: Iterable[str]) -> None:
        """Ended jobs: stop watching them and drop their records."""
        ids = list(job_ids)
        super().forget(ids)
        for job_id in ids:
            job = self._load(job_id)
            if job is None or not self._alive(job):
                (self.jobs_dir / f"{job_id}.json").unlink(missing_ok=True)
                self._processes.pop(job_id, None)

    def _alive(self, job: _LocalJob) -> bool:
        process = self._processes.get(job.job_id)
        if process is not None:
            return process.poll() is None
        return _is_our_process(job.pid, job.job_id)

    def poll_now(self, job_ids: Iterable[str], with_nodes: bool = True) -> Poll:
        now = time.time()
        statuses, missing = {}, []
        for job_id in job_ids:
            job = self._load(job_id)
            if job is None:
                missing.append(job_id)
                continue
            self._keep_time_limit(job, now)
            statuses[job_id] = self._status(job, now)
        return Poll(now, statuses, missing=tuple(missing))

    def _keep_time_limit(self, job: _LocalJob, now: float) -> None:
        if not self._alive(job):
            return
        age = now - job.started_at
        if age >= job.time_limit_s and job.job_id not in self._signalled:
            self._ends.setdefault(job.job_id, "TIMEOUT")
            self._signal(job, signal.SIGTERM)
        elif age >= job.time_limit_s - job.warning_s and job.job_id not in self._warned:
            self._warned.add(job.job_id)
            self._signal(job, signal.SIGUSR1)
        signalled = self._signalled.get(job.job_id)
        if signalled is not None and now - signalled > LOCAL_KILL_AFTER_S:
            self._signal(job, signal.SIGKILL)

    def _status(self, job: _LocalJob, now: float) -> JobStatus:
        common = {"job_id": job.job_id, "name": f"local-{job.role}", "partition": job.partition,
                  "nodes": os.uname().nodename, "time_limit_s": job.time_limit_s,
                  "source": "local"}
        if self._alive(job):
            left = max(0.0, job.started_at + job.time_limit_s - now)
            return JobStatus(state="RUNNING", time_left_s=left, **common)  # type: ignore[arg-type]
        process = self._processes.get(job.job_id)
        code = process.returncode if process is not None else None
        state = self._ends.get(job.job_id) or ("COMPLETED" if code in (0, None) else "FAILED")
        return JobStatus(state=state, exit_code=code, **common)  # type: ignore[arg-type]

    def discover(self) -> list[Discovered]:
        found = []
        for path in sorted(self.jobs_dir.glob("local-*.json")):
            job = self._load(path.stem)
            if job is not None and self._alive(job):
                found.append(Discovered(job.job_id, job.role, job.partition))
        return found


def _is_our_process(pid: int, job_id: str) -> bool:
    """True when `pid` runs and is the launcher of `job_id` (not a later process with its pid)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{ENV_JOB_ID}={job_id}".encode() in environ.split(b"\0")
