"""The live autoscaler: the broker's twin of the simulator, as thin. Every tick, on the broker's
loop, it drains the broker's events into the SnapshotBuilder, folds in the backend's latest poll
(through the job table, fleet.py), runs the PolicyRunner on the snapshot and applies the
actions: Submit -> the backend, Drain -> the broker drains the job's worker (the job is cancelled
once the worker has left), Cancel -> the backend. Snapshots and decisions go to the event log,
job transitions to the log and the store, and the state of everything to status.json and the
Prometheus metrics.

It never blocks the loop: the backend submits, cancels and polls on its own thread. A `down`
(a control file, a signal, Ctrl-C) stops the policy, drains prefillers first (so prefilled
requests still find a decoder), then everything else, cancels what never served, and stops the
broker when no job is left (`now`: cancel at once)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.broker.backends import JobBackend, Report
from tsslurm.broker.eventlog import EventLog, decision_summary
from tsslurm.broker.events import Arrival, Finished, FirstToken, WorkerChange
from tsslurm.broker.fleet import Command, Fleet, FleetJob, Notice, Transition
from tsslurm.broker.metrics import Metrics
from tsslurm.broker.server import Broker
from tsslurm.broker.status import (
    JobLine,
    PartitionLine,
    PoolLine,
    RateLine,
    SloLine,
    Status,
    write_status,
)
from tsslurm.broker.store import JobRecord
from tsslurm.policy.builder import SnapshotBuilder, partition_views
from tsslurm.policy.reconcile import role_velocity
from tsslurm.policy.runner import PolicyRunner
from tsslurm.policy.snapshot import Cancel, Drain, Snapshot, Submit
from tsslurm.profile.schema import Profile
from tsslurm.statedir import write_atomically

log = logging.getLogger("tsslurm.autoscaler")

CONTROL_FILE = "control.json"
SLO_WINDOW_S = 300.0
RECENT = 20
DOWN_SETTLE_S = 15.0
"""After the last job ended for the policy, how long a down waits for the backend to confirm."""


class Control(msgspec.Struct, frozen=True):
    """What a running broker is asked through the control file in the state directory: "down"
    (`tsslurm down`) or "handover" (a successor broker job takes over; the jobs stay)."""

    command: str
    now: bool = False


def write_control(root: Path, control: Control) -> None:
    write_atomically(root / CONTROL_FILE, msgspec.json.encode(control))


def withdraw_handover(root: Path) -> None:
    """Remove a handover request nobody read (its broker had already gone): the broker taking
    over would otherwise read it as its own. Any other request stays."""
    path = root / CONTROL_FILE
    try:
        control = msgspec.json.decode(path.read_bytes(), type=Control)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return
    if control.command == "handover":
        path.unlink(missing_ok=True)


class Autoscaler:
    def __init__(self, broker: Broker, profile: Profile, backend: JobBackend,
                 runner: PolicyRunner, root: Path, *, backend_why: str = "",
                 metrics: Metrics | None = None):
        self.broker, self.profile, self.backend, self.runner = broker, profile, backend, runner
        self.root = root
        self.backend_why = backend_why
        self.metrics = metrics
        self.started_at = time.time()
        self.builder = SnapshotBuilder.from_profile(profile, origin=self.started_at)
        self.fleet = Fleet(self.builder, [profile.partition(p.name)
                                          for p in partition_views(profile)])
        self.log = EventLog(root)
        self.store = broker.store
        self.phase = "serving"
        self.decisions: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.notices: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._last_targets: dict[str, dict[str, int]] | None = None
        self._slo: deque[tuple[float, bool]] = deque()
        self._down: bool | None = None
        """None: serving; False: drain everything; True: cancel everything now."""
        self._handover = False
        """Stop without touching a job: a successor broker re-adopts them."""
        self.rotating = False
        """This broker's job nears its time limit and a successor was asked for: Slurm's
        SIGTERM then means hand over, not down."""
        self._down_since: float | None = None
        self._settled_since: float | None = None
        self._poll_error: str | None = None
        self.log.runner(self.started_at, runner.name, _params_dict(runner.params))
        self.log.event(self.started_at, "start", deployment=profile.deployment, pid=os.getpid(),
                       backend=backend.kind, why=backend_why, policy=runner.name)

    # ---- start-up -----------------------------------------------------------------------------

    def adopt(self, now: float) -> list[str]:
        """Take back the jobs a previous broker of this deployment left (its SQLite records and
        the backend's live jobs of this deployment); returns the adopted job ids."""
        records = {job.job_id: job for job in self.store.open_jobs()} if self.store else {}
        found = {job.job_id: job for job in self.backend.discover()}
        ids = sorted(set(records) | set(found))
        if not ids:
            return []
        poll = self.backend.poll_now(ids)
        adopted = []
        for job_id in ids:
            record, seen = records.get(job_id), found.get(job_id)
            role = record.role if record else seen.role  # type: ignore[union-attr]
            partition = record.partition if record else seen.partition  # type: ignore[union-attr]
            status = poll.statuses.get(job_id)
            if self.fleet.adopt(now, job_id, role, partition, status,
                                record.submitted_at if record else None,
                                record.started_at if record else None):
                adopted.append(job_id)
            elif record is not None:
                why = f"ended while no broker ran: {status.state if status else 'unknown to Slurm'}"
                self._store_job(JobRecord(job_id=job_id, role=role, partition=partition,
                                          state="ended", ended_at=now, reason=why))
        self.backend.watch(adopted)
        self.log.event(now, "adopted", jobs=adopted, closed=sorted(set(ids) - set(adopted)))
        self._settle(now)
        return adopted

    # ---- the tick -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        report = self.backend.take()
        self._submissions(now, report)
        for event in self.broker.events.drain():
            self._feed(now, event)
        self._poll(now, report)
        self._worker_stats(now)
        self.fleet.check(now, {p.name: p.queue_wait.mean_s for p in self.profile.partitions})
        self._settle(now)
        self._read_control()
        snapshot = self.builder.snapshot(now)
        if self._handover:
            self._hand_over(now)
        elif self._down is None:
            self._step(now, snapshot)
        else:
            self._down_step(now)
        self._settle(now)
        self._publish(now, snapshot)

    def request_down(self, now: bool = False) -> None:
        """Signal- and thread-safe: drain (or, with `now`, cancel) everything, then stop."""
        self._down = bool(now) or bool(self._down)

    def request_handover(self) -> None:
        """Signal- and thread-safe: stop serving, leave every job running (ignored once a down
        has begun: that down finishes)."""
        self._handover = self._down is None

    def _submissions(self, now: float, report: Report) -> None:
        for done in report.submitted:
            if done.job_id is not None:
                self.fleet.submitted(now, done.token, done.job_id)
            else:
                self.fleet.submit_failed(now, done.token, done.error or "unknown error")
        for error in report.cancel_errors:
            self._notice(Notice(now, "cancel-failed", "backend", error))

    def _feed(self, now: float, event: Any) -> None:
        builder = self.builder
        if isinstance(event, Arrival):
            builder.arrival(event.time, event.request_id, event.input_tokens)
        elif isinstance(event, FirstToken):
            builder.prefill_finished(event.time, event.request_id)
            builder.first_token(event.time, event.request_id)
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, WorkerChange):
            self.fleet.worker_event(event.time, event)

    def _finished(self, event: Finished) -> None:
        if event.outcome == "ok":
            self.builder.finished(event.time, event.request_id, event.output_tokens)
        else:
            self.builder.dropped(event.time, event.request_id)
        slo = self.profile.slo
        met = event.outcome == "ok" and event.ttft_s is not None \
            and event.ttft_s * 1000 <= slo.ttft_ms_for(event.input_tokens) \
            and (event.tpot_s is None or event.tpot_s * 1000 <= slo.tpot_ms)
        self._slo.append((event.time, met))
        if self.metrics is not None:
            self.metrics.finished(event)

    def _poll(self, now: float, report: Report) -> None:
        poll = report.poll
        if poll is None:
            return
        self.builder.slurm_view(now, not poll.stale)
        if poll.stale and poll.error != self._poll_error:
            self._notice(Notice(now, "poll-failed", self.backend.kind, poll.error or "stale"))
        self._poll_error = poll.error if poll.stale else None
        node_failed = any(s.state == "NODE_FAIL" and (s.job_id in self.fleet.jobs
                                                      or s.job_id in self.fleet.closing)
                          for s in poll.statuses.values())
        self.fleet.apply_poll(now, poll.statuses, poll.missing, poll.nodes)
        if node_failed and poll.nodes is None:
            self.backend.refresh_nodes()

    def _worker_stats(self, now: float) -> None:
        for worker in self.broker.core.pool.workers:
            if worker.info.job_id:
                self.builder.worker_stats(now, worker.info.job_id, worker.stats.kv_used_tokens,
                                          worker.stats.decode_tokens_per_s)

    # ---- the policy ---------------------------------------------------------------------------

    def _step(self, now: float, snapshot: Snapshot) -> None:
        step = self.runner.step(snapshot)
        self.log.step(snapshot, step)
        if step.actions or step.decision.targets != self._last_targets:
            summary = {"time": now, **decision_summary(step.decision, step.actions)}
            self.decisions.append(summary)
            self.log.event(now, "decision", **{k: v for k, v in summary.items() if k != "time"})
        self._last_targets = step.decision.targets
        for action in step.actions:
            self._apply(now, action)

    def _apply(self, now: float, action: Submit | Drain | Cancel) -> None:
        if isinstance(action, Submit):
            partition = self.profile.partition(action.partition)
            for _ in range(action.count):
                token = self.fleet.submitting(now, action.role, action.partition)
                self.backend.submit(token, action.role, partition)
        elif isinstance(action, Drain):
            self._drain(now, action.job_id, action.reason)
        else:
            self.fleet.cancel(now, action.job_id, action.reason)

    def _drain(self, now: float, job_id: str, reason: str) -> None:
        job = self.fleet.jobs.get(job_id)
        if job is None or job.state == "draining":
            return
        if job.state == "ready" and self.broker.core.drain_job(job_id, now, reason):
            self.fleet.draining(now, job_id, reason)
        else:
            self.fleet.cancel(now, job_id, reason)

    # ---- down ---------------------------------------------------------------------------------

    def _read_control(self) -> None:
        path = self.root / CONTROL_FILE
        try:
            control = msgspec.json.decode(path.read_bytes(), type=Control)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("ignoring an unreadable control file %s: %s", path, error)
            path.unlink(missing_ok=True)
            return
        path.unlink(missing_ok=True)
        if control.command == "down":
            self.request_down(control.now)
        elif control.command == "handover":
            self.request_handover()

    def _down_step(self, now: float) -> None:
        if self._down_since is None:
            self._down_since, self.phase = now, "stopping"
            self.log.event(now, "down", now=self._down)
            log.info("down: %s, then stopping", "cancelling every job" if self._down
                     else "draining every job")
        timeout = self.broker.config.request_timeout_s
        cancel_all = self._down or now - self._down_since > timeout
        prefill_left = any(j.role == "prefill" for j in self.fleet.live())
        for job in self.fleet.live():
            if cancel_all or job.state in ("pending", "starting") or job.token:
                self.fleet.cancel(now, job.job_id, "down")
            elif job.state == "ready" and (job.role == "prefill" or not prefill_left):
                self._drain(now, job.job_id, "down")
        self._stop_when_settled(now)

    def _hand_over(self, now: float) -> None:
        if self.phase != "handing over":
            self.phase = "handing over"
            jobs = sorted(self.fleet.jobs)
            self.log.event(now, "handover", jobs=jobs)
            log.info("handing over to a successor broker; jobs left running: %s",
                     ", ".join(jobs) or "none")
            self.broker.request_stop()

    def _stop_when_settled(self, now: float) -> None:
        if self.fleet.jobs:
            return
        self._settled_since = self._settled_since or now
        if not self.fleet.closing or now - self._settled_since > DOWN_SETTLE_S:
            self.phase = "stopped"
            self.broker.request_stop()

    # ---- bookkeeping --------------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        changes, commands, notices = self.fleet.take()
        for change in changes:
            self._transition(change)
        for command in commands:
            self._command(now, command)
        for notice in notices:
            self._notice(notice)

    def _transition(self, change: Transition) -> None:
        fields = msgspec.structs.asdict(change)
        self.log.event(fields.pop("time"), "job", **fields)
        log.info("job %s (%s on %s): %s -> %s: %s", change.job_id, change.role, change.partition,
                 change.old or "new", change.new, change.reason)
        job = self.fleet.jobs.get(change.job_id) or self.fleet.closing.get(change.job_id) \
            or next((j for j in self.fleet.ended if j.job_id == change.job_id), None)
        if job is not None:
            self._store_job(_record(job))
        if self.metrics is not None:
            self.metrics.transition(change.role, change.partition, change.new, change.wait_s)

    def _command(self, now: float, command: Command) -> None:
        core = self.broker.core
        if command.kind == "cancel":
            self.backend.cancel([command.job_id])
        elif command.kind == "drain":
            core.drain_job(command.job_id, now, command.reason)
        elif command.kind == "drop":
            core.drop_job(command.job_id, now, command.reason)
        else:
            self.backend.forget([command.job_id])

    def _notice(self, notice: Notice) -> None:
        self.notices.append(msgspec.structs.asdict(notice))
        self.log.event(notice.time, "notice", notice=notice.kind, subject=notice.subject,
                       text=notice.text)
        log.warning("%s %s: %s", notice.kind, notice.subject, notice.text)

    def _store_job(self, record: JobRecord) -> None:
        if self.store is not None:
            self.store.put_job(record)

    def _publish(self, now: float, snapshot: Snapshot) -> None:
        status = self.status(now, snapshot)
        write_status(self.root, status)
        if self.metrics is not None:
            self.metrics.update(status)

    def close(self) -> None:
        self.phase = "stopped"
        now = time.time()
        self.backend.close()
        self._settle(now)
        write_status(self.root, self.status(now, self.builder.snapshot(now)))
        self.log.event(now, "stopped")
        self.log.close()

    # ---- status -------------------------------------------------------------------------------

    def status(self, now: float, snapshot: Snapshot) -> Status:
        core = self.broker.core
        connection = self.broker.state.connection_file
        address = f"tcp://{self.broker.config.host}:{self.broker.client_port}"
        return Status(
            deployment=self.profile.deployment, phase=self.phase, pid=os.getpid(),
            host=socket.gethostname(), backend=self.backend.kind, backend_why=self.backend_why,
            policy=self.runner.name, started_at=self.started_at, updated_at=now,
            client_address=address if connection.exists() else "",
            metrics_port=self.metrics.port if self.metrics else None,
            pools=self._pools(snapshot),
            partitions=[PartitionLine(p.name, p.available, self.fleet.unavailability(p.name),
                                      p.queue_wait_s) for p in snapshot.partitions],
            jobs=[_job_line(j, now) for j in self.fleet.live()],
            ended=[_job_line(j, now) for j in list(self.fleet.ended)[-10:]],
            rates=[RateLine(r.window_s, r.requests_per_s, r.input_tokens_per_s,
                            r.predicted_output_tokens_per_s) for r in snapshot.rates],
            velocities=_velocities(snapshot), slo=self._slo_line(now, snapshot),
            requests={"in_flight": len(core.requests), "queued": len(core.prefill_queue),
                      "awaiting_decode": len(core.decode_queue),
                      "late": core.prefill_queue.late_count(now) + core.decode_queue.late_count(now),
                      "counters": dict(core.counters)},
            decisions=list(self.decisions), notices=list(self.notices))

    def _pools(self, snapshot: Snapshot) -> list[PoolLine]:
        targets = self._last_targets or {}
        return [PoolLine(role, part, c.ready, c.starting, c.pending, c.draining,
                         targets.get(role, {}).get(part))
                for role, parts in snapshot.pools.items() for part, c in parts.items()]

    def _slo_line(self, now: float, snapshot: Snapshot) -> SloLine:
        while self._slo and self._slo[0][0] < now - SLO_WINDOW_S:
            self._slo.popleft()
        met = sum(1 for _, ok in self._slo if ok)
        share = met / len(self._slo) if self._slo else None
        return SloLine(SLO_WINDOW_S, len(self._slo), share, snapshot.load.ttft_p90_ms,
                       snapshot.load.tpot_p90_ms)


def _velocities(snapshot: Snapshot) -> dict[str, float]:
    totals = {"prefill": 0.0, "decode": 0.0}
    for part in snapshot.partitions:
        for role, stage in (("prefill", "prefill"), ("decode", "decode"),
                            ("convertible", "decode")):
            ready = snapshot.pools.get(role, {}).get(part.name)
            if ready is not None:
                totals[stage] += ready.ready * role_velocity(part, role)  # type: ignore[arg-type]
    return totals


def _job_line(job: FleetJob, now: float) -> JobLine:
    end = job.ended_at or now
    why = job.pending_reason if job.state == "pending" and job.pending_reason else job.reason
    return JobLine(job.job_id, job.role, job.partition, job.state, job.node,
                   end - job.submitted_at,
                   None if job.ends_at is None or job.ended_at else job.ends_at - now,
                   why, job.slurm_state, job.worker_id)


def _record(job: FleetJob) -> JobRecord:
    return JobRecord(job_id=job.job_id, role=job.role, partition=job.partition,
                     state="ended" if job.ended_at else job.state,
                     submitted_at=job.submitted_at, started_at=job.started_at,
                     ready_at=job.ready_at, ended_at=job.ended_at, worker_id=job.worker_id,
                     node=job.node or None, reason=job.reason)


def _params_dict(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return msgspec.structs.asdict(params)

