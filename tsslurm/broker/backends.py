"""Job backends: where the autoscaler's workers run, behind one small interface (`JobBackend`).

- `SlurmBackend`: renders the partition's sbatch template and submits, cancels and polls through
  the Slurm adapter (the only code that runs Slurm commands).
- `LocalBackend`: the same launcher as local subprocesses (a laptop, this machine, `make run`).

Both do their work on one thread of their own, so the broker's loop never waits for Slurm or a
process: `submit` and `cancel` only queue, and `take()` (once per autoscaler tick) collects what
happened since the last call: each submission's job id (or why it failed), the errors of
cancellations, and the latest poll. A poll is one batched command for every watched job (squeue,
plus sacct for those that left it) and, every few polls, sinfo for the nodes' states.
`discover()` and `poll_now()` are the synchronous calls re-adoption makes before the loop runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import msgspec

from tsslurm.errors import UserError
from tsslurm.launcher.settings import ENV_JOB_ID, launcher_env
from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmAdapter, SlurmError
from tsslurm.slurm.parse import JobStatus, NodeInfo
from tsslurm.slurm.render import JobSpec

log = logging.getLogger("tsslurm.autoscaler")

POLL_S = 1.0
NODES_EVERY = 5
"""sinfo runs on every NODES_EVERY-th poll: nodes change state rarely."""
LOCAL_KILL_AFTER_S = 10.0
"""A local worker still alive this long after SIGTERM gets SIGKILL (Slurm's KillWait)."""
WARNING_S = 30.0
"""The launcher's SIGUSR1 (it drains) comes this long before the time limit, at most a quarter
of it: a last resort, after the autoscaler's own rotation (start-up + 2 minutes ahead). Slurm
may deliver it up to a minute early."""


def warning_lead_s(time_limit_s: float) -> int:
    return max(1, int(min(WARNING_S, time_limit_s / 4)))


class Submitted(msgspec.Struct, frozen=True):
    token: str
    """The autoscaler's name for the submission until it has a job id."""
    job_id: str | None
    error: str | None = None
    at: float = 0.0


class Poll(msgspec.Struct, frozen=True):
    at: float
    statuses: dict[str, JobStatus]
    stale: bool = False
    error: str | None = None
    missing: tuple[str, ...] = ()
    nodes: list[NodeInfo] | None = None
    """Every node's state, when this poll asked sinfo (None otherwise, or when sinfo failed)."""


class Report(msgspec.Struct):
    submitted: list[Submitted]
    cancel_errors: list[str]
    poll: Poll | None


class Discovered(msgspec.Struct, frozen=True):
    """A live job of this deployment found in the backend (for re-adoption)."""

    job_id: str
    role: str
    partition: str


class JobBackend(Protocol):
    kind: str

    def start(self) -> None: ...

    def submit(self, token: str, role: str, partition: Partition) -> None: ...

    def cancel(self, job_ids: Iterable[str]) -> None: ...

    def watch(self, job_ids: Iterable[str]) -> None: ...

    def forget(self, job_ids: Iterable[str]) -> None: ...

    def take(self) -> Report: ...

    def discover(self) -> list[Discovered]: ...

    def poll_now(self, job_ids: Iterable[str]) -> Poll: ...

    def cancel_now(self, job_ids: Iterable[str]) -> list[str]: ...

    def close(self) -> None: ...


class _Worker:
    """The backend's thread: runs queued actions in order, polls every `poll_s`."""

    def __init__(self, poll_s: float):
        self.poll_s = poll_s
        self._actions: deque[Callable[[], None]] = deque()
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._submitted: list[Submitted] = []
        self._cancel_errors: list[str] = []
        self._poll: Poll | None = None
        self._polls = 0
        self._thread = threading.Thread(target=self._run, name=f"tsslurm-{self.kind}-backend",
                                        daemon=True)

    kind = "base"

    def start(self) -> None:
        self._thread.start()

    def submit(self, token: str, role: str, partition: Partition) -> None:
        self._queue(lambda: self._do_submit(token, role, partition))

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            self._queue(lambda: self._do_cancel(ids))

    def watch(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._watched.update(job_ids)

    def forget(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._watched.difference_update(job_ids)

    def take(self) -> Report:
        with self._lock:
            report = Report(self._submitted, self._cancel_errors, self._poll)
            self._submitted, self._cancel_errors, self._poll = [], [], None
        return report

    def cancel_now(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel on the caller's thread (`tsslurm down` with no broker); the errors."""
        self._do_cancel(list(job_ids))
        return self.take().cancel_errors

    def close(self, timeout_s: float = 30.0) -> None:
        """Run what is still queued (a `down`'s cancellations), then end the thread."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _queue(self, action: Callable[[], None]) -> None:
        self._actions.append(action)
        self._wake.set()

    def _run(self) -> None:
        next_poll = time.monotonic()
        while True:
            self._run_actions()
            if self._stop:
                return
            if time.monotonic() >= next_poll:
                self._publish_poll()
                next_poll = time.monotonic() + self.poll_s
            self._wake.wait(max(0.0, next_poll - time.monotonic()))
            self._wake.clear()

    def _run_actions(self) -> None:
        while self._actions:
            try:
                self._actions.popleft()()
            except Exception as error:  # an action's failure is reported, never ends the thread
                log.exception("backend action failed")
                with self._lock:
                    self._cancel_errors.append(f"internal error: {error}")

    def _publish_poll(self) -> None:
        with self._lock:
            ids = sorted(self._watched)
        self._polls += 1
        try:
            poll = self.poll_now(ids, with_nodes=self._polls % NODES_EVERY == 1)
        except Exception as error:  # observations degrade: the autoscaler holds still
            log.exception("backend poll failed")
            poll = Poll(time.time(), {}, stale=True, error=str(error))
        with self._lock:
            self._poll = poll

    def _report_submission(self, submitted: Submitted) -> None:
        with self._lock:
            self._submitted.append(submitted)
            if submitted.job_id is not None:
                self._watched.add(submitted.job_id)

    def _report_cancel_error(self, message: str) -> None:
        with self._lock:
            self._cancel_errors.append(message)

    def _do_submit(self, token: str, role: str, partition: Partition) -> None:
        raise NotImplementedError

    def _do_cancel(self, job_ids: list[str]) -> None:
        raise NotImplementedError

    def poll_now(self, job_ids: Iterable[str], with_nodes: bool = True) -> Poll:
        raise NotImplementedError


class SlurmBackend(_Worker):
    """Workers as Slurm jobs named `<name_prefix>-<role>`, rendered from their partition's
    template with the launcher's environment."""

    kind = "slurm"

    def __init__(self, adapter: SlurmAdapter, *, profile_path: str, state_dir: Path,
                 name_prefix: str, poll_s: float = POLL_S):
        super().__init__(poll_s)
        self.adapter = adapter
        self.profile_path = profile_path
        self.state_dir = state_dir
        self.name_prefix = name_prefix
        self.log_dir = state_dir / "logs"

    def job_spec(self, role: str, partition: Partition) -> JobSpec:
        env = launcher_env(role, self.profile_path, partition.name, str(self.state_dir))
        return JobSpec(name=f"{self.name_prefix}-{role}", partition=partition,
                       log_dir=str(self.log_dir), env=env,
                       warning_s=warning_lead_s(partition.time_limit_s))

    def _do_submit(self, token: str, role: str, partition: Partition) -> None:
        try:
            job_id = self.adapter.submit_job(self.job_spec(role, partition))
        except (UserError, OSError) as error:  # Slurm, render, log dir: reported, then retried
            self._report_submission(Submitted(token, None, str(error), time.time()))
            return
        self._report_submission(Submitted(token, job_id, None, time.time()))

    def _do_cancel(self, job_ids: list[str]) -> None:
        try:
            self.adapter.cancel(job_ids)
        except SlurmError as error:
            self._report_cancel_error(str(error))

    def poll_now(self, job_ids: Iterable[str], with_nodes: bool = True) -> Poll:
        result = self.adapter.poll(job_ids)
        nodes = None
        if with_nodes:
            try:
                nodes = self.adapter.nodes()
            except SlurmError as error:
                log.warning("sinfo failed, keeping the last node states: %s", error)
        return Poll(time.time(), result.statuses, result.stale, result.error, result.missing,
                    nodes)

    def discover(self) -> list[Discovered]:
        """Live jobs named like this deployment's workers (squeue by name)."""
        prefix = self.name_prefix + "-"
        found = []
        for job in self.adapter.jobs(prefix):
            role = job.name[len(prefix):]
            if not job.final and role in ("prefill", "decode", "convertible"):
                found.append(Discovered(job.job_id, role, job.partition))
        return found


class _LocalJob(msgspec.Struct, frozen=True):
    job_id: str
    pid: int
    role: str
    partition: str
    started_at: float
    time_limit_s: float
    warning_s: float


class LocalBackend(_Worker):
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
