"""The broker's view of engine workers: one mutable Worker per connected worker (capabilities from
READY, stats from heartbeats, and the broker's own in-flight accounting), the pool that indexes
them, and the read-only views the autoscaler and `tsslurm status` get. No I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from tsslurm.protocol import WorkerInfo, WorkerStats

ROLE_ALIASES = {"prefill": "prefiller", "prefiller": "prefiller", "decode": "decoder",
                "decoder": "decoder", "convertible": "convertible"}
"""Protocol roles (prefiller/decoder/convertible) by their protocol or policy (prefill/decode) name."""
POLICY_ROLE = {"prefiller": "prefill", "decoder": "decode", "convertible": "convertible"}


class Worker:
    __slots__ = (
        "absorb_tokens",
        "accepting",
        "draining",
        "identity",
        "in_flight",
        "info",
        "kv_capacity",
        "kv_reserved",
        "last_seen",
        "partition",
        "prefill_cap",
        "prefill_tokens",
        "ready_at",
        "role",
        "served",
        "stats",
        "worker_id",
    )

    def __init__(self, identity: bytes, info: WorkerInfo, now: float, *, absorb_tokens: int,
                 prefill_cap: int):
        self.identity = identity
        self.info = info
        self.worker_id = info.worker_id
        self.role = ROLE_ALIASES[info.role]
        self.partition = info.partition
        self.accepting = True
        self.draining = False
        self.in_flight: dict[str, Any] = {}
        self.prefill_tokens = 0
        self.kv_reserved = 0
        self.kv_capacity = info.kv_capacity_tokens
        self.prefill_cap = info.prefill_cap_tokens or prefill_cap
        self.absorb_tokens = absorb_tokens
        self.stats = WorkerStats()
        self.ready_at = now
        self.last_seen = now
        self.served = 0

    @property
    def in_flight_count(self) -> int:
        return len(self.in_flight)

    def view(self) -> WorkerView:
        return WorkerView(
            worker_id=self.worker_id, role=self.role, partition=self.partition,
            job_id=self.info.job_id, node=self.info.node, engine=self.info.engine,
            state="draining" if self.draining else "ready", in_flight=len(self.in_flight),
            prefill_tokens=self.prefill_tokens, kv_reserved=self.kv_reserved,
            kv_capacity=self.kv_capacity, served=self.served, ready_at=self.ready_at,
            last_seen=self.last_seen, stats=self.stats)


class WorkerView(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    role: str
    partition: str
    job_id: str | None
    node: str
    engine: str
    state: str
    """"ready" (takes work) or "draining" (finishing in-flight work, takes no more)."""
    in_flight: int
    prefill_tokens: int
    kv_reserved: int
    kv_capacity: int
    served: int
    ready_at: float
    last_seen: float
    stats: WorkerStats


class WorkerPool:
    def __init__(self) -> None:
        self._by_identity: dict[bytes, Worker] = {}
        self.workers: list[Worker] = []
        """All connected workers, in READY order (what routing iterates)."""

    def add(self, worker: Worker) -> None:
        self._by_identity[worker.identity] = worker
        self.workers = list(self._by_identity.values())

    def remove(self, worker: Worker) -> None:
        if self._by_identity.pop(worker.identity, None) is not None:
            self.workers = list(self._by_identity.values())

    def get(self, identity: bytes) -> Worker | None:
        return self._by_identity.get(identity)

    def find(self, worker_id: str) -> Worker | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)

    def find_job(self, job_id: str) -> Worker | None:
        """The worker serving in the job `job_id` (READY's job id), if it is connected."""
        return next((w for w in self.workers if w.info.job_id == job_id), None)

    def views(self) -> list[WorkerView]:
        return [worker.view() for worker in self.workers]

    def counts(self) -> dict[str, dict[str, int]]:
        """Policy role -> {"ready": n, "draining": n}."""
        counts = {role: {"ready": 0, "draining": 0} for role in POLICY_ROLE.values()}
        for worker in self.workers:
            counts[POLICY_ROLE[worker.role]]["draining" if worker.draining else "ready"] += 1
        return counts

    def __len__(self) -> int:
        return len(self.workers)
