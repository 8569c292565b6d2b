"""Job backends: where the autoscaler's workers run, behind one small interface (`JobBackend`).

- `SlurmBackend`: renders the partition's sbatch template and submits, cancels and polls through
  the Slurm adapter (the only code that runs Slurm commands).
- `LocalBackend` (local_jobs.py): the same launcher as local subprocesses (a laptop, this
  machine, `make run`).

Both do their work on one thread of their own (`BackendThread`), so the broker's loop never waits for Slurm or a
process: `submit` and `cancel` only queue, and `take()` (once per autoscaler tick) collects what
happened since the last call: each submission's job id (or why it failed), the errors of
cancellations, and the latest poll. A poll is one batched command for every watched job (squeue,
plus sacct for those that left it) and, every few polls, sinfo for the nodes' states.
`discover()` and `poll_now()` are the synchronous calls re-adoption makes before the loop runs."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import msgspec

from tsslurm.errors import UserError
from tsslurm.launcher.settings import launcher_env
from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmAdapter, SlurmError
from tsslurm.slurm.parse import JobStatus, NodeInfo
from tsslurm.slurm.render import JobSpec

log = logging.getLogger("tsslurm.autoscaler")

POLL_S = 1.0
NODES_EVERY = 5
"""sinfo runs on every NODES_EVERY-th poll: nodes change state rarely."""
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

    def refresh_nodes(self) -> None: ...

    def discover(self) -> list[Discovered]: ...

    def poll_now(self, job_ids: Iterable[str]) -> Poll: ...

    def cancel_now(self, job_ids: Iterable[str]) -> list[str]: ...

    def close(self) -> None: ...


class BackendThread:
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
        self._nodes_wanted = False
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

    def refresh_nodes(self) -> None:
        """The next poll asks for the nodes' states too (a job just ended NODE_FAIL)."""
        self._nodes_wanted = True

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
        with_nodes = self._polls % NODES_EVERY == 1 or self._nodes_wanted
        self._nodes_wanted = False
        try:
            poll = self.poll_now(ids, with_nodes=with_nodes)
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


class SlurmBackend(BackendThread):
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
