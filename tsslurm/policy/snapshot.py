"""The cluster snapshot a policy sees and the decision it returns: the contract between policies
and their two adapters (the live broker and the simulator). Pure data: no I/O, no clock - the
snapshot's `now` is the only time a policy knows.

Roles: "prefill" (prefillers), "decode" (decoders), "convertible" (preallocated decoders that also
prefill a burst's requests themselves). Counts are kept per role and partition and by state:
ready (serving), starting (job running, engine loading), pending (queued in Slurm), draining
(leaving routing, finishing in-flight work). A policy that saw only ready workers would pile up
submissions while earlier jobs sit in the queue."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from tsslurm.profile.schema import LengthBuckets, Pools, Slo, Velocities

Role = Literal["prefill", "decode", "convertible"]
ROLES: tuple[Role, ...] = ("prefill", "decode", "convertible")


class PoolCounts(msgspec.Struct, frozen=True):
    ready: int = 0
    starting: int = 0
    pending: int = 0
    draining: int = 0

    @property
    def provisioned(self) -> int:
        """Instances that are or will be serving (what a target is compared with)."""
        return self.ready + self.starting + self.pending


class PartitionView(msgspec.Struct, frozen=True):
    """What a policy knows of one partition: its velocities and how long new capacity takes."""

    name: str
    gpus_per_instance: int
    velocities: Velocities
    queue_wait_s: float
    """Current estimate of the queue wait (the profile's, updated from observed waits)."""
    model_load_s: float
    time_limit_s: float
    available: bool = True
    """False when jobs there will not start (QOS limit, invalid account, nodes down)."""

    @property
    def startup_s(self) -> float:
        return self.queue_wait_s + self.model_load_s


class TokenRates(msgspec.Struct, frozen=True):
    """Arrival rates over one sliding window, measured in tokens (TokenScale) and requests."""

    window_s: float
    requests_per_s: float = 0.0
    input_tokens_per_s: float = 0.0
    """lambda_in."""
    predicted_output_tokens_per_s: float = 0.0
    bucket_tokens_per_s: list[list[float]] = []
    """lambda'_b: input + predicted output tokens/s per (input bucket, output bucket)."""


class LoadView(msgspec.Struct, frozen=True):
    """What the workers report (or the simulator knows) about current load: the signals the
    baselines scale on, and what tokenscale uses to see a burst in progress."""

    prefill_queued_tokens: int = 0
    """Input tokens waiting for or in prefill, on prefillers and convertibles together."""
    prefill_in_flight: int = 0
    """Requests waiting for or in prefill (AIBrix's prefill concurrency)."""
    decode_running: int = 0
    decode_kv_used_tokens: int = 0
    decode_kv_capacity_tokens: int = 0
    """Of ready decoders and convertibles (AIBrix's KV-use signal is used / capacity)."""
    decode_kv_demand_tokens: int = 0
    """Input + predicted output tokens of the requests past prefill and not finished, wherever
    they wait: the KV decoders must hold for them (what the broker reserves per request)."""
    decode_tokens_per_s: float = 0.0
    """Output tokens/s the decoders produced recently (HeteroScale's signal)."""
    convertible_prefill_tokens: int = 0
    """Prefill tokens convertible decoders have in flight (burst work)."""
    ttft_p90_ms: float | None = None
    tpot_p90_ms: float | None = None
    """Of requests finished recently (Dynamo's correction); None when none finished."""


class JobView(msgspec.Struct, frozen=True):
    job_id: str
    role: Role
    partition: str
    state: Literal["pending", "starting", "ready", "draining"]
    submitted_at: float
    started_at: float | None = None
    ends_at: float | None = None
    """When Slurm's time limit ends the job (None while pending)."""


class Snapshot(msgspec.Struct, frozen=True):
    now: float
    pools: dict[str, dict[str, PoolCounts]]
    """role -> partition -> counts (every role and partition present)."""
    partitions: list[PartitionView]
    rates: list[TokenRates]
    """One per window of the estimator, shortest window first."""
    load: LoadView
    slo: Slo
    buckets: LengthBuckets
    bounds: Pools
    jobs: list[JobView] = []
    stale: bool = False
    """The Slurm view is old (a poll failed): hold still rather than act on it."""

    def count(self, role: Role, state: str = "provisioned") -> int:
        return sum(getattr(c, state) for c in self.pools.get(role, {}).values())


class Decision(msgspec.Struct, frozen=True):
    targets: dict[str, dict[str, int]]
    """role -> partition -> instances wanted (ready + starting + pending)."""
    reasons: list[str] = []
    """Why, in words a user reads in `tsslurm status` and the event log."""
    state: dict[str, Any] = {}
    """The policy's memory, handed back to it on the next call (cooldowns, history)."""


class Submit(msgspec.Struct, frozen=True):
    role: Role
    partition: str
    count: int = 1
    reason: str = ""


class Drain(msgspec.Struct, frozen=True):
    """Take a running job out of routing; cancel it once its in-flight work is done."""

    job_id: str
    reason: str = ""


class Cancel(msgspec.Struct, frozen=True):
    """Cancel a job at once (pending jobs: nothing to drain)."""

    job_id: str
    reason: str = ""


Action = Submit | Drain | Cancel
