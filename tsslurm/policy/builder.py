"""SnapshotBuilder: the one place that turns what happens (request arrivals, prefill start and
finish, first tokens, finishes, Slurm job state changes, worker stats, Slurm poll outcomes) into
the Snapshot a policy sees. The live broker and the simulator both feed it the same events, so
their snapshots agree by construction.

It sees only what the caller has told it so far: a request's output length is learned when the
request finishes, never before, and a snapshot at `now` depends on no event after `now`.
Request and job ids the builder does not know are ignored (the event methods return False):
observations degrade, they do not raise. Pure: no I/O, no clock."""

from __future__ import annotations

from collections import deque
from typing import Literal

import msgspec

from tsslurm.errors import UserError
from tsslurm.perfmodel import bucket_of
from tsslurm.policy.predictor import OutputForecast, OutputPredictor
from tsslurm.policy.snapshot import (
    ROLES,
    JobView,
    LoadView,
    PartitionView,
    PoolCounts,
    Role,
    Snapshot,
)
from tsslurm.policy.velocity import DEFAULT_WINDOWS_S, VelocityEstimator
from tsslurm.profile.schema import LengthBuckets, Pools, Profile, Slo

JobState = Literal["pending", "starting", "ready", "draining"]
RECENT_LATENCY_S = 60.0
RECENT_LATENCY_COUNT = 512
QUEUE_WAIT_ALPHA = 0.3
"""Weight of the newest observed queue wait in the partition's estimate."""


class _Request:
    __slots__ = (
        "arrived_at",
        "first_token_at",
        "in_prefill",
        "input_tokens",
        "kv_tokens",
        "on_convertible",
    )

    def __init__(self, input_tokens: int, arrived_at: float, kv_tokens: float):
        self.input_tokens = input_tokens
        self.arrived_at = arrived_at
        self.kv_tokens = kv_tokens
        """Input + predicted output tokens: its KV on a decoder."""
        self.on_convertible = False
        self.in_prefill = True
        self.first_token_at: float | None = None


class _Job:
    __slots__ = (
        "decode_tokens_per_s",
        "ends_at",
        "job_id",
        "kv_capacity_tokens",
        "kv_used_tokens",
        "partition",
        "role",
        "started_at",
        "state",
        "submitted_at",
    )

    def __init__(self, job_id: str, role: Role, partition: str, submitted_at: float):
        self.job_id = job_id
        self.role: Role = role
        self.partition = partition
        self.state: JobState = "pending"
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.ends_at: float | None = None
        self.kv_capacity_tokens = 0
        self.kv_used_tokens = 0
        self.decode_tokens_per_s = 0.0

    def view(self) -> JobView:
        return JobView(self.job_id, self.role, self.partition, self.state, self.submitted_at,
                       self.started_at, self.ends_at)


class _Recent:
    """The last few latency samples (time, ms), read as a p90 over a recent span."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=RECENT_LATENCY_COUNT)

    def add(self, now: float, value_ms: float) -> None:
        self.samples.append((now, value_ms))

    def p90(self, now: float) -> float | None:
        values = sorted(v for t, v in self.samples if t > now - RECENT_LATENCY_S)
        return values[min(len(values) - 1, int(0.9 * len(values)))] if values else None


class SnapshotBuilder:
    """Events in, Snapshots out. Construct with `from_profile`, or directly for tests."""

    def __init__(self, partitions: list[PartitionView], slo: Slo, buckets: LengthBuckets,
                 bounds: Pools, origin: float = 0.0,
                 windows_s: tuple[float, ...] = DEFAULT_WINDOWS_S,
                 predictor: OutputPredictor | None = None):
        if not partitions:
            raise ValueError("a snapshot needs at least one partition with velocities")
        self.slo, self.buckets, self.bounds = slo, buckets, bounds
        self.estimator = VelocityEstimator(len(buckets.input_edges) + 1,
                                           len(buckets.output_edges) + 1, origin, windows_s)
        self.predictor = predictor or OutputPredictor(buckets.output_edges)
        self._partitions = {p.name: p for p in partitions}
        self._requests: dict[str, _Request] = {}
        self._jobs: dict[str, _Job] = {}
        self._ttft, self._tpot = _Recent(), _Recent()
        self._prefill_tokens = 0
        self._prefill_requests = 0
        self._convertible_tokens = 0
        self._decode_running = 0
        self._decode_kv_tokens = 0.0
        self._stale = False

    @classmethod
    def from_profile(cls, profile: Profile, origin: float = 0.0,
                     windows_s: tuple[float, ...] = DEFAULT_WINDOWS_S) -> SnapshotBuilder:
        views = partition_views(profile)
        if not views:
            raise UserError(f"profile {profile.deployment!r}: no partition has velocities; "
                            "policies size pools from them (run `tsslurm profile`)")
        return cls(views, profile.slo, profile.buckets, profile.pools, origin, windows_s)

    # ---- requests ---------------------------------------------------------------------------

    def arrival(self, now: float, request_id: str, input_tokens: int) -> OutputForecast:
        """A request entered the system; returns its output forecast (what routing may use)."""
        forecast = self.predictor.predict(input_tokens)
        input_bucket = bucket_of(input_tokens, self.buckets.input_edges)
        self.estimator.add(now, input_tokens, input_bucket, forecast.spread(input_tokens))
        self._requests[request_id] = _Request(input_tokens, now, input_tokens + forecast.mean)
        self._prefill_tokens += input_tokens
        self._prefill_requests += 1
        return forecast

    def prefill_started(self, now: float, request_id: str, job_id: str) -> bool:
        request, job = self._requests.get(request_id), self._jobs.get(job_id)
        if request is None or not request.in_prefill:
            return False
        if job is not None and job.role == "convertible" and not request.on_convertible:
            request.on_convertible = True
            self._convertible_tokens += request.input_tokens
        return True

    def prefill_finished(self, now: float, request_id: str) -> bool:
        request = self._requests.get(request_id)
        if request is None or not request.in_prefill:
            return False
        self._leave_prefill(request)
        self._decode_running += 1
        self._decode_kv_tokens += request.kv_tokens
        return True

    def first_token(self, now: float, request_id: str) -> bool:
        request = self._requests.get(request_id)
        if request is None or request.first_token_at is not None:
            return False
        request.first_token_at = now
        self._ttft.add(now, 1000.0 * (now - request.arrived_at))
        return True

    def finished(self, now: float, request_id: str, output_tokens: int) -> bool:
        """The request is done; its true output length teaches the predictor."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.predictor.learn(request.input_tokens, output_tokens)
        if request.first_token_at is not None and output_tokens > 1:
            tpot_s = (now - request.first_token_at) / (output_tokens - 1)
            self._tpot.add(now, 1000.0 * tpot_s)
        self._forget(request)
        return True

    def dropped(self, now: float, request_id: str) -> bool:
        """Rejected, aborted or failed: no output length to learn from."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self._forget(request)
        return True

    def _leave_prefill(self, request: _Request) -> None:
        request.in_prefill = False
        self._prefill_tokens -= request.input_tokens
        self._prefill_requests -= 1
        if request.on_convertible:
            self._convertible_tokens -= request.input_tokens

    def _forget(self, request: _Request) -> None:
        if request.in_prefill:
            self._leave_prefill(request)
        else:
            self._decode_running -= 1
            self._decode_kv_tokens -= request.kv_tokens
            if not self._decode_running:
                self._decode_kv_tokens = 0.0

    # ---- jobs and workers -------------------------------------------------------------------

    def job_submitted(self, now: float, job_id: str, role: Role, partition: str) -> None:
        if partition not in self._partitions:
            raise ValueError(f"job {job_id}: unknown partition {partition!r}")
        if role not in ROLES:
            raise ValueError(f"job {job_id}: unknown role {role!r}")
        self._jobs[job_id] = _Job(job_id, role, partition, now)

    def job_started(self, now: float, job_id: str, ends_at: float | None = None) -> bool:
        """Slurm runs the job (the engine is loading); `ends_at` defaults to now + time limit."""
        job = self._jobs.get(job_id)
        if job is None or job.state != "pending":
            return False
        part = self._partitions[job.partition]
        job.state, job.started_at = "starting", now
        job.ends_at = ends_at if ends_at is not None else now + part.time_limit_s
        self._observe_queue_wait(part, now - job.submitted_at)
        return True

    def job_ready(self, now: float, job_id: str, kv_capacity_tokens: int | None = None) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.state not in ("pending", "starting"):
            return False
        if job.state == "pending":
            self.job_started(now, job_id)
        part = self._partitions[job.partition]
        job.state = "ready"
        job.kv_capacity_tokens = kv_capacity_tokens or part.velocities.kv_capacity_tokens
        return True

    def job_draining(self, now: float, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.state = "draining"
        return True

    def job_ended(self, now: float, job_id: str) -> bool:
        """Gone from Slurm: finished, cancelled, timed out or failed."""
        return self._jobs.pop(job_id, None) is not None

    def worker_stats(self, now: float, job_id: str, kv_used_tokens: int = 0,
                     decode_tokens_per_s: float = 0.0) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.kv_used_tokens, job.decode_tokens_per_s = kv_used_tokens, decode_tokens_per_s
        return True

    def slurm_view(self, now: float, ok: bool) -> None:
        """The outcome of a Slurm poll: a failed one makes the snapshot stale until one succeeds."""
        self._stale = not ok

    def partition_available(self, name: str, available: bool) -> None:
        part = self._partitions[name]
        self._partitions[name] = _replace(part, available=available)

    def _observe_queue_wait(self, part: PartitionView, wait_s: float) -> None:
        estimate = (1 - QUEUE_WAIT_ALPHA) * part.queue_wait_s + QUEUE_WAIT_ALPHA * wait_s
        self._partitions[part.name] = _replace(part, queue_wait_s=estimate)

    # ---- the snapshot -----------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            now=now, pools=self._pools(), partitions=self._partition_views(now),
            rates=self.estimator.rates(now), load=self._load(now), slo=self.slo,
            buckets=self.buckets, bounds=self.bounds,
            jobs=[job.view() for job in self._jobs.values()], stale=self._stale,
        )

    @property
    def requests_in_flight(self) -> int:
        return len(self._requests)

    def _pools(self) -> dict[str, dict[str, PoolCounts]]:
        tallies = {role: {name: [0, 0, 0, 0] for name in self._partitions} for role in ROLES}
        index = {"ready": 0, "starting": 1, "pending": 2, "draining": 3}
        for job in self._jobs.values():
            tallies[job.role][job.partition][index[job.state]] += 1
        return {role: {name: PoolCounts(*counts) for name, counts in parts.items()}
                for role, parts in tallies.items()}

    def _partition_views(self, now: float) -> list[PartitionView]:
        """The queue-wait estimate never lies below the wait of a job still pending."""
        longest: dict[str, float] = {}
        for job in self._jobs.values():
            if job.state == "pending":
                waited = now - job.submitted_at
                longest[job.partition] = max(longest.get(job.partition, 0.0), waited)
        views = []
        for part in self._partitions.values():
            waited = longest.get(part.name, 0.0)
            views.append(_replace(part, queue_wait_s=waited) if waited > part.queue_wait_s else part)
        return views

    def _load(self, now: float) -> LoadView:
        serving = [j for j in self._jobs.values()
                   if j.state == "ready" and j.role in ("decode", "convertible")]
        return LoadView(
            prefill_queued_tokens=self._prefill_tokens,
            prefill_in_flight=self._prefill_requests,
            decode_running=self._decode_running,
            decode_kv_used_tokens=sum(j.kv_used_tokens for j in serving),
            decode_kv_capacity_tokens=sum(j.kv_capacity_tokens for j in serving),
            decode_kv_demand_tokens=max(0, round(self._decode_kv_tokens)),
            decode_tokens_per_s=sum(j.decode_tokens_per_s for j in serving),
            convertible_prefill_tokens=self._convertible_tokens,
            ttft_p90_ms=self._ttft.p90(now),
            tpot_p90_ms=self._tpot.p90(now),
        )


def partition_views(profile: Profile) -> list[PartitionView]:
    """A PartitionView per profile partition that has velocities (the profile's queue wait)."""
    return [
        PartitionView(name=p.name, gpus_per_instance=p.gpus_per_instance,
                      velocities=p.velocities, queue_wait_s=p.queue_wait.mean_s,
                      model_load_s=p.model_load_s, time_limit_s=p.time_limit_s)
        for p in profile.partitions if p.velocities is not None
    ]


def _replace(part: PartitionView, **changes: object) -> PartitionView:
    return msgspec.structs.replace(part, **changes)
