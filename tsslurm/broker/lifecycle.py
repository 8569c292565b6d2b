"""Workers as the broker's core sees them: READY (with the checks a worker must pass),
heartbeats both ways with expiry, DISCONNECT, and the drain API the autoscaler uses. Requests a
lost or departing worker held are handed back to the core's re-routing (`_interrupt`). A mixin
of BrokerCore (core.py), which owns the state it reads; no I/O except through the Outbox."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from tsslurm.broker.config import BrokerConfig
from tsslurm.broker.events import EventHub, WorkerChange
from tsslurm.broker.queueing import DeadlineQueue
from tsslurm.broker.store import JobRecord
from tsslurm.broker.workers import POLICY_ROLE, ROLE_ALIASES, Worker, WorkerPool
from tsslurm.protocol import (
    PROTOCOL_VERSION,
    BrokerBeat,
    Command,
    Disconnect,
    Drain,
    ErrorReply,
    TokenDelta,
    WorkerInfo,
    WorkerStats,
    WorkItem,
)


class Outbox(Protocol):
    """Where the core's outgoing messages go (batched and sent by the socket loop)."""

    def stream(self, client: bytes, delta: TokenDelta) -> None: ...

    def error(self, client: bytes, reply: ErrorReply) -> None: ...

    def work(self, worker: bytes, item: WorkItem) -> None: ...

    def abort(self, worker: bytes, request_id: str) -> None: ...

    def send(self, worker: bytes, command: Command, body: msgspec.Struct) -> None: ...


class WorkerLifecycle:
    config: BrokerConfig
    outbox: Outbox
    events: EventHub
    counters: Counter[str]
    pool: WorkerPool
    decode_queue: DeadlineQueue[Any]
    dirty: bool
    _job: Callable[[JobRecord], None]

    def _interrupt(self, request: Any, now: float, *, retry: bool, reason: str) -> None:
        raise NotImplementedError

    def ready(self, identity: bytes, info: WorkerInfo, now: float) -> Worker | None:
        problem = self._worker_problem(info)
        if problem is not None:
            self.counters["workers_refused"] += 1
            self.outbox.send(identity, Command.DISCONNECT, Disconnect(reason=problem, fatal=True))
            return None
        for old in (self.pool.get(identity), self.pool.find(info.worker_id)):
            if old is not None:
                self._lose(old, now, "it registered again", retry=False, change="left")
        worker = Worker(identity, info, now, absorb_tokens=self.config.absorb_for(info.partition),
                        prefill_cap=self.config.prefill_cap_tokens)
        self.pool.add(worker)
        self.dirty = True
        self._worker_event(worker, now, "ready")
        return worker

    def heartbeat(self, worker: Worker, stats: WorkerStats, now: float) -> None:
        worker.stats = stats
        worker.last_seen = now
        if stats.draining and not worker.draining:
            self._mark_draining(worker, now, "the worker is draining")
        self.dirty = True

    def disconnected(self, worker: Worker, message: Disconnect, now: float) -> None:
        self._lose(worker, now, message.reason or "disconnected", retry=message.fatal,
                   change="lost" if message.fatal else "left")

    def drain(self, worker_id: str, now: float, reason: str = "") -> bool:
        """Take a worker out of routing; it finishes its work, then disconnects (autoscaler seam)."""
        worker = self.pool.find(worker_id)
        if worker is None:
            return False
        self.outbox.send(worker.identity, Command.DRAIN, Drain(reason=reason))
        self._mark_draining(worker, now, reason)
        return True

    def drain_job(self, job_id: str, now: float, reason: str = "") -> bool:
        """`drain` the worker of a job (the autoscaler knows jobs); False when none is connected."""
        worker = self.pool.find_job(job_id)
        return worker is not None and self.drain(worker.worker_id, now, reason)

    def drop_job(self, job_id: str, now: float, reason: str) -> bool:
        """The job ended (Slurm says so) while its worker still looked connected: drop it now and
        re-route what it held, without waiting for its heartbeats to expire."""
        worker = self.pool.find_job(job_id)
        if worker is None:
            return False
        self.outbox.send(worker.identity, Command.DISCONNECT, Disconnect(reason=reason, fatal=True))
        self._lose(worker, now, reason, retry=True, change="lost")
        return True

    def beat(self, now: float) -> None:
        """Heartbeat every worker and drop the silent ones."""
        beat = BrokerBeat(time=now)
        for worker in list(self.pool.workers):
            if now - worker.last_seen > self.config.expiry_s:
                self.outbox.send(worker.identity, Command.DISCONNECT,
                                 Disconnect(reason="missed heartbeats: register again"))
                self._lose(worker, now, f"silent for {now - worker.last_seen:.1f} s",
                           retry=True, change="lost")
            else:
                self.outbox.send(worker.identity, Command.HEARTBEAT, beat)

    def _lose(self, worker: Worker, now: float, reason: str, *, retry: bool, change: str) -> None:
        self.pool.remove(worker)
        self.counters[f"workers_{change}"] += 1
        for request in list(worker.in_flight.values()):
            self._interrupt(request, now, retry=retry, reason=f"{worker.worker_id}: {reason}")
        for request in [r for r in self.decode_queue if r.kv_source is worker]:
            self._interrupt(request, now, retry=retry, reason=f"its KV was on {worker.worker_id}")
        self._worker_event(worker, now, change, reason)

    def _mark_draining(self, worker: Worker, now: float, reason: str) -> None:
        worker.accepting = False
        worker.draining = True
        self._worker_event(worker, now, "draining", reason)

    def _worker_problem(self, info: WorkerInfo) -> str | None:
        if info.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {info.protocol_version}; this broker speaks {PROTOCOL_VERSION}"
        if info.role not in ROLE_ALIASES:
            return f"unknown role {info.role!r}; use prefiller, decoder or convertible"
        if info.model != self.config.model:
            return f"this deployment serves {self.config.model!r}, not {info.model!r}"
        if not info.worker_id:
            return "READY needs a worker_id"
        return None

    def _worker_event(self, worker: Worker, now: float, change: str, reason: str = "") -> None:
        self.events.emit(WorkerChange(now, worker.worker_id, POLICY_ROLE[worker.role],
                                      worker.partition, change, worker.info.job_id, reason))
        if worker.info.job_id:
            state = {"ready": "ready", "draining": "draining"}.get(change, "ended")
            self._job(JobRecord(job_id=worker.info.job_id, role=POLICY_ROLE[worker.role],
                                partition=worker.partition, state=state, worker_id=worker.worker_id,
                                node=worker.info.node, ready_at=now if change == "ready" else None,
                                ended_at=now if state == "ended" else None, reason=reason))
