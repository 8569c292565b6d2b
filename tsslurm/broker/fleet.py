"""The autoscaler's job table: every job the deployment owns, in the states the policy counts
(pending, starting, ready, draining; then ended), and why each changed. It folds in the backend's
polls (job states, pending reasons, nodes) and the broker's worker events, and mirrors every change
into the SnapshotBuilder, so the policy's view of jobs and this table never disagree.

Pure: no I/O, no clock. What must be done comes back from `take()`: `changes` (transitions, for
the event log and the store; `ended -> final` when the backend confirms how a job the
deployment let go ended), `commands` (cancel a job, drain or drop its worker, stop watching
it) and `notices` (partition availability, jobs pending too long, failed submissions)."""

from __future__ import annotations

from collections import deque
from typing import Literal

import msgspec

from tsslurm.broker.events import WorkerChange
from tsslurm.broker.pending import node_usable, will_not_start
from tsslurm.policy.builder import SnapshotBuilder
from tsslurm.profile.schema import Partition
from tsslurm.slurm.parse import JobStatus, NodeInfo

UNAVAILABLE_S = 300.0
"""A partition whose jobs will not start is avoided this long, then tried again."""
LOST_GRACE_S = 30.0
"""A silent worker whose job still runs gets this long to reconnect before the job is cancelled."""
MISSING_POLLS = 3
"""Polls a job may be unknown to the backend before it is taken as gone."""
RECENT_ENDED = 50


class Transition(msgspec.Struct, frozen=True):
    time: float
    job_id: str
    role: str
    partition: str
    old: str
    new: str
    reason: str = ""
    wait_s: float | None = None
    """Queue wait, on the pending -> starting transition."""


class Command(msgspec.Struct, frozen=True):
    kind: Literal["cancel", "drain", "drop", "forget"]
    job_id: str
    reason: str = ""


class Notice(msgspec.Struct, frozen=True):
    time: float
    kind: str
    subject: str
    text: str


class FleetJob:
    __slots__ = ("absent", "absent_since", "cancel_requested", "ended_at", "ends_at", "job_id",
                 "missing", "node", "node_fault", "noticed_long", "partition", "pending_reason",
                 "ready_at", "reason", "role", "slurm_state", "started_at", "state",
                 "submitted_at", "worker_id")

    def __init__(self, job_id: str, role: str, partition: str, submitted_at: float):
        self.job_id, self.role, self.partition = job_id, role, partition
        self.state = "pending"
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        self.ends_at: float | None = None
        self.node = ""
        self.worker_id: str | None = None
        self.reason = ""
        self.pending_reason = ""
        self.slurm_state = ""
        self.absent: str | None = None
        self.absent_since: float | None = None
        self.cancel_requested = False
        self.noticed_long = False
        self.node_fault = False
        self.missing = 0

    @property
    def token(self) -> bool:
        """Still a submission without a job id."""
        return self.job_id.startswith(TOKEN_PREFIX)


TOKEN_PREFIX = "submitting-"


class Fleet:
    def __init__(self, builder: SnapshotBuilder, partitions: list[Partition]):
        self.builder = builder
        self.partitions = {p.name: p for p in partitions}
        self.jobs: dict[str, FleetJob] = {}
        self.closing: dict[str, FleetJob] = {}
        """Ended for the policy, not yet final in the backend (cancelled, drained)."""
        self.ended: deque[FleetJob] = deque(maxlen=RECENT_ENDED)
        self.unavailable: dict[str, tuple[float, str]] = {}
        """Partition -> (until, why): its jobs would not start."""
        self.blocked: dict[str, str] = {}
        """Partition -> why: none of its nodes can run jobs (down, drained, missing)."""
        self.nodes: dict[str, NodeInfo] = {}
        self.available: dict[str, bool] = {}
        """What the builder was last told of each partition."""
        self._tokens = 0
        self.changes: list[Transition] = []
        self.commands: list[Command] = []
        self.notices: list[Notice] = []

    def take(self) -> tuple[list[Transition], list[Command], list[Notice]]:
        taken = self.changes, self.commands, self.notices
        self.changes, self.commands, self.notices = [], [], []
        return taken

    def live(self) -> list[FleetJob]:
        return list(self.jobs.values())

    # ---- submissions and adoption -------------------------------------------------------------

    def submitting(self, now: float, role: str, partition: str) -> str:
        self._tokens += 1
        token = f"{TOKEN_PREFIX}{self._tokens}"
        self.jobs[token] = FleetJob(token, role, partition, now)
        self.builder.job_submitted(now, token, role, partition)  # type: ignore[arg-type]
        return token

    def submitted(self, now: float, token: str, job_id: str) -> None:
        placeholder = self.jobs.pop(token, None)
        if placeholder is None:
            return
        self.builder.job_ended(now, token)
        job = FleetJob(job_id, placeholder.role, placeholder.partition, placeholder.submitted_at)
        self.jobs[job_id] = job
        self.builder.job_submitted(job.submitted_at, job_id, job.role, job.partition)  # type: ignore[arg-type]
        self._change(job, now, "", "pending", "submitted")
        if placeholder.cancel_requested:
            self.cancel(now, job_id, placeholder.reason or "cancelled while being submitted")

    def submit_failed(self, now: float, token: str, error: str) -> None:
        placeholder = self.jobs.pop(token, None)
        if placeholder is None:
            return
        self.builder.job_ended(now, token)
        self.notices.append(Notice(now, "submit-failed", placeholder.partition,
                                   f"{placeholder.role} on {placeholder.partition}: {error}"))
        if will_not_start(error):
            self._mark_unavailable(now, placeholder.partition, f"sbatch refused: {error}")

    def adopt(self, now: float, job_id: str, role: str, partition: str, status: JobStatus | None,
              submitted_at: float | None = None, started_at: float | None = None) -> bool:
        """Take back a job a previous broker owned; False (nothing kept) when it has ended."""
        if partition not in self.partitions or status is None or status.final:
            return False
        job = FleetJob(job_id, role, partition, submitted_at or now)
        self.jobs[job_id] = job
        self.builder.job_submitted(job.submitted_at, job_id, role, partition)  # type: ignore[arg-type]
        self._change(job, now, "", "pending", "re-adopted after a broker restart")
        if status.running:
            self._start(job, now, status, started_at)
        return True

    # ---- the autoscaler's actions -------------------------------------------------------------

    def draining(self, now: float, job_id: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.state in ("ready", "starting"):
            self.builder.job_draining(now, job_id)
            self._change(job, now, job.state, "draining", reason)

    def cancel(self, now: float, job_id: str, reason: str) -> None:
        """The job is cancelled (or about to be): it ends for the policy now."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job.token:
            job.cancel_requested, job.reason = True, reason
            return
        self.commands.append(Command("cancel", job_id, reason))
        self._end(job, now, reason, closing=True)

    # ---- observations -------------------------------------------------------------------------

    def apply_poll(self, now: float, statuses: dict[str, JobStatus], missing: tuple[str, ...],
                   nodes: list[NodeInfo] | None) -> None:
        if nodes is not None:
            self._apply_nodes(now, nodes)
        for job_id, status in statuses.items():
            if job_id in self.jobs:
                self._apply_status(now, self.jobs[job_id], status)
            elif job_id in self.closing and status.final:
                closed = self.closing.pop(job_id)
                if status.state == "NODE_FAIL":
                    self._node_failed(now, closed.node)
                closed.slurm_state = status.state
                closed.reason = f"{closed.reason}; Slurm: {_final_reason(status)}"
                self.changes.append(Transition(now, job_id, closed.role, closed.partition,
                                               "ended", "final", closed.reason))
                self.commands.append(Command("forget", job_id))
        for job_id in missing:
            self._missing(now, job_id)
        self._refresh_availability(now)

    def worker_event(self, now: float, event: WorkerChange) -> None:
        job = self.jobs.get(event.job_id or "")
        if job is None:
            return
        if event.change == "ready":
            job.worker_id, job.absent, job.absent_since = event.worker_id, None, None
            if job.state in ("pending", "starting"):
                if job.state == "pending":
                    self._start(job, now, None)
                self.builder.job_ready(now, job.job_id)
                job.ready_at = now
                self._change(job, now, "starting", "ready", "the worker registered")
            elif job.state == "draining":
                self.commands.append(Command("drain", job.job_id, job.reason))
        elif event.change == "draining":
            self.draining(now, job.job_id, event.reason or "the worker is draining")
        elif event.change in ("left", "lost"):
            job.absent, job.absent_since = event.change, now
            job.reason = event.reason

    def check(self, now: float, pending_expected_s: dict[str, float]) -> None:
        """Once per tick, after the events: workers that left or went silent, long waits."""
        for job in list(self.jobs.values()):
            if job.absent == "left":
                self.commands.append(Command("cancel", job.job_id, "its worker left"))
                self._end(job, now, f"worker left: {job.reason}", closing=True)
            elif job.absent == "lost" and now - (job.absent_since or now) > LOST_GRACE_S:
                self.commands.append(Command("cancel", job.job_id, "its worker went silent"))
                self._end(job, now, f"worker silent for {LOST_GRACE_S:.0f} s: {job.reason}",
                          closing=True)
            elif job.state == "pending" and not job.token and not job.noticed_long:
                self._notice_long_wait(now, job, pending_expected_s.get(job.partition, 0.0))
        for name, (until, _) in list(self.unavailable.items()):
            if now >= until:
                del self.unavailable[name]
                self._refresh_availability(now)

    # ---- internals ----------------------------------------------------------------------------

    def _apply_status(self, now: float, job: FleetJob, status: JobStatus) -> None:
        job.missing = 0
        job.slurm_state = status.state
        if status.nodes:
            job.node = status.nodes
        if status.final:
            detail = _final_reason(status)
            if status.state == "NODE_FAIL":
                self._node_failed(now, job.node)
            if job.state in ("ready", "draining") and job.absent is None:
                self.commands.append(Command("drop", job.job_id, f"its job ended: {detail}"))
            self._end(job, now, detail, closing=False)
            self.commands.append(Command("forget", job.job_id))
        elif status.pending:
            job.pending_reason = status.reason
            if will_not_start(status.reason, self._partition_nodes_down(job.partition)):
                why = f"job {job.job_id} will not start: {status.reason}"
                self._mark_unavailable(now, job.partition, why)
                self.cancel(now, job.job_id, why)
        elif status.running and job.state == "pending":
            self._start(job, now, status)
        if status.running and job.state in ("ready", "starting") and not job.node_fault:
            self._check_node(now, job)

    def _start(self, job: FleetJob, now: float, status: JobStatus | None,
               started_at: float | None = None) -> None:
        """Slurm runs the job; it ends at now + its time left (or the partition's limit)."""
        left = status.time_left_s if status is not None else None
        started = started_at if started_at is not None else now
        job.started_at = started
        job.ends_at = now + left if left is not None \
            else started + self.partitions[job.partition].time_limit_s
        if status is not None and status.nodes:
            job.node = status.nodes
        self.builder.job_started(started, job.job_id, job.ends_at)
        self._change(job, now, "pending", "starting", "the job runs, the engine loads",
                     wait_s=started - job.submitted_at)

    def _end(self, job: FleetJob, now: float, reason: str, *, closing: bool) -> None:
        self.jobs.pop(job.job_id, None)
        self.builder.job_ended(now, job.job_id)
        old = job.state
        job.ended_at = now
        self.ended.append(job)
        if closing:
            self.closing[job.job_id] = job
        self._change(job, now, old, "ended", reason)

    def _missing(self, now: float, job_id: str) -> None:
        job = self.jobs.get(job_id) or self.closing.get(job_id)
        if job is None:
            return
        job.missing += 1
        if job.missing < MISSING_POLLS:
            return
        self.closing.pop(job_id, None)
        if job_id in self.jobs:
            self._end(job, now, "the backend no longer knows the job", closing=False)
        self.commands.append(Command("forget", job_id))

    def _check_node(self, now: float, job: FleetJob) -> None:
        node = self.nodes.get(job.node)
        if node is None or node_usable(node):
            return
        job.node_fault = True
        why = f"node {node.name} is {node.state}" + (f" ({node.reason})" if node.reason else "")
        self.notices.append(Notice(now, "node", node.name, f"job {job.job_id}: {why}: replaced"))
        if job.state == "ready":
            self.commands.append(Command("drain", job.job_id, why))
            self.draining(now, job.job_id, why)
        else:
            self.cancel(now, job.job_id, why)

    def _node_failed(self, now: float, name: str) -> None:
        """Slurm ended a job NODE_FAIL: its node counts as down until sinfo says otherwise, so
        no replacement goes to a partition that has no node left."""
        node = self.nodes.get(name)
        if node is not None and node_usable(node):
            failed = msgspec.structs.replace(node, state="down", reason="a job ended NODE_FAIL")
            self._apply_nodes(now, [failed if n.name == name else n for n in self.nodes.values()])

    def _apply_nodes(self, now: float, nodes: list[NodeInfo]) -> None:
        self.nodes = {node.name: node for node in nodes}
        for name in self.partitions:
            members = [n for n in nodes if name in n.partitions]
            if not members:
                self.blocked[name] = "not a partition of this cluster"
            elif not any(node_usable(n) for n in members):
                states = ", ".join(sorted({f"{n.name} {n.state}" for n in members}))
                self.blocked[name] = f"no node can run jobs ({states})"
            else:
                self.blocked.pop(name, None)

    def _partition_nodes_down(self, partition: str) -> bool:
        return partition in self.blocked

    def _mark_unavailable(self, now: float, partition: str, why: str) -> None:
        self.unavailable[partition] = (now + UNAVAILABLE_S, why)
        self._refresh_availability(now)

    def _refresh_availability(self, now: float) -> None:
        for name in self.partitions:
            why = self.unavailability(name)
            if self.available.get(name, True) == (why is None):
                continue
            self.available[name] = why is None
            self.builder.partition_available(name, why is None)
            text = f"unavailable: {why}" if why else "available again"
            self.notices.append(Notice(now, "partition", name, text))

    def unavailability(self, partition: str) -> str | None:
        """Why jobs on `partition` are not submitted now (None: they are)."""
        if partition in self.blocked:
            return self.blocked[partition]
        if partition in self.unavailable:
            return self.unavailable[partition][1]
        return None

    def _notice_long_wait(self, now: float, job: FleetJob, expected_s: float) -> None:
        waited = now - job.submitted_at
        if waited > max(2 * expected_s, expected_s + 30.0):
            job.noticed_long = True
            self.notices.append(Notice(
                now, "pending-long", job.job_id,
                f"{job.role} job {job.job_id} pending {waited:.0f} s on {job.partition} "
                f"(expected ~{expected_s:.0f} s): {job.pending_reason or 'no reason given'}"))

    def _change(self, job: FleetJob, now: float, old: str, new: str, reason: str,
                wait_s: float | None = None) -> None:
        job.state, job.reason = new, reason
        if not job.token:
            self.changes.append(Transition(now, job.job_id, job.role, job.partition, old, new,
                                           reason, wait_s))


def _final_reason(status: JobStatus) -> str:
    parts = [status.state]
    if status.cancelled_by is not None:
        parts.append(f"by uid {status.cancelled_by}")
    if status.exit_code not in (None, 0):
        parts.append(f"exit {status.exit_code}")
    if status.signal:
        parts.append(f"signal {status.signal}")
    return " ".join(parts)
