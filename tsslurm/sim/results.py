"""What a simulation is configured with and what it returns (plain data, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tsslurm.policy.runner import Step
from tsslurm.policy.snapshot import Snapshot
from tsslurm.sim.cluster import Cluster
from tsslurm.sim.slo import Outcomes


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    drain_grace_s: float = 600.0
    """After the last arrival the run goes on at most this long for requests to finish."""
    sample_s: float = 10.0
    """Spacing of the timeline samples (plots)."""
    max_batch_tokens: int | None = None
    """Tokens per prefill batch; default: the engine's max_num_batched_tokens, else 8192."""
    chunk_tokens: int | None = None
    """Prefill tokens a decoder adds to one iteration when it prefills whole requests; default:
    what V_P prefills in half the TPOT target (so the decodes beside it keep TPOT), at most the
    convertible cap."""
    record_snapshots: bool = False
    """Keep every snapshot the policy saw with the actions it led to (parity tests)."""
    warm_start: bool = True
    """Start with the pools' minimum ready (a service already up), billed from time 0."""
    warmup_s: float = 0.0
    """When > 0, also report SLO attainment, GPU time and the bounds over what comes after this
    time only (`*_after_warmup`): the requests arriving from then on, the GPU time billed from
    then on, and bounds that let any capacity run at that time for free."""


@dataclass
class Timeline:
    time_s: list[float]
    counts: dict[str, list[list[int]]]
    """role -> per sample [ready, starting, pending, draining]."""
    ready_prefill_tokens_per_s: list[float]


@dataclass
class RunResult:
    outcomes: Outcomes
    cluster: Cluster
    end_s: float
    timeline: Timeline
    decisions: list[tuple[float, dict[str, dict[str, int]]]]
    steps: list[tuple[Snapshot, Step]] = field(default_factory=list)
