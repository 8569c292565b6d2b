"""A snapshot factory for the policy tests: hand-built snapshots whose jobs agree with their
pool counts, on the reference A100 partition (profiles/llama3-8b-a100.yaml)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from tsslurm.policy.builder import partition_views
from tsslurm.policy.snapshot import (
    JobView,
    LoadView,
    PartitionView,
    PoolCounts,
    Snapshot,
    TokenRates,
)
from tsslurm.profile import load_profile
from tsslurm.profile.schema import LengthBuckets, PoolBounds, Pools, Profile, Slo

WINDOWS = (10.0, 60.0, 300.0)
STATES = ("ready", "starting", "pending", "draining")


@functools.cache
def reference_profile() -> Profile:
    return load_profile("llama3-8b-a100")


def partition(name: str = "a100", **changes: Any) -> PartitionView:
    base = partition_views(reference_profile())[0]
    return msgspec.structs.replace(base, name=name, **changes)


def rates(input_per_s: float = 0.0, output_per_s: float = 0.0, *, short: float | None = None,
          requests_per_s: float | None = None, cell: tuple[int, int] = (1, 1)) -> list[TokenRates]:
    """Three windows at the same rate (the short one at `short` x that rate when given), with
    every token in one (input bucket, output bucket) cell."""
    out = []
    for window in WINDOWS:
        factor = short if (short is not None and window == WINDOWS[0]) else 1.0
        grid = [[0.0] * 3 for _ in range(3)]
        grid[cell[0]][cell[1]] = factor * (input_per_s + output_per_s)
        out.append(TokenRates(
            window_s=window,
            requests_per_s=factor * (requests_per_s if requests_per_s is not None
                                     else input_per_s / 1000.0),
            input_tokens_per_s=factor * input_per_s,
            predicted_output_tokens_per_s=factor * output_per_s,
            bucket_tokens_per_s=grid,
        ))
    return out


def bounds(prefill: tuple[int, int] = (1, 32), decode: tuple[int, int] = (1, 32),
           convertible: tuple[int, int] = (0, 8), gpu_budget: int | None = None) -> Pools:
    return Pools(prefill=PoolBounds(min=prefill[0], max=prefill[1]),
                 decode=PoolBounds(min=decode[0], max=decode[1]),
                 convertible=PoolBounds(min=convertible[0], max=convertible[1]),
                 gpu_budget=gpu_budget)


def snapshot(now: float = 10_000.0, *, counts: dict[str, dict[str, dict[str, int]]] | None = None,
             partitions: list[PartitionView] | None = None,
             token_rates: list[TokenRates] | None = None, load: LoadView | None = None,
             pool_bounds: Pools | None = None, stale: bool = False,
             ends_in: dict[str, float] | None = None) -> Snapshot:
    """`counts`: role -> partition -> state -> n. Jobs are made to match: running ones end
    3 h from now unless `ends_in` maps a job id to seconds left."""
    partitions = partitions or [partition()]
    counts = counts or {}
    ends_in = ends_in or {}
    jobs = _jobs(now, counts, ends_in)
    pools = {role: {p.name: _pool(counts.get(role, {}).get(p.name, {})) for p in partitions}
             for role in ("prefill", "decode", "convertible")}
    return Snapshot(now=now, pools=pools, partitions=partitions,
                    rates=token_rates or rates(), load=load or LoadView(), slo=Slo(),
                    buckets=LengthBuckets(), bounds=pool_bounds or bounds(), jobs=jobs, stale=stale)


def running(ready: int = 0, starting: int = 0, pending: int = 0,
            draining: int = 0) -> dict[str, int]:
    return {"ready": ready, "starting": starting, "pending": pending, "draining": draining}


def _pool(states: dict[str, int]) -> PoolCounts:
    return PoolCounts(**{s: states.get(s, 0) for s in STATES})


def _jobs(now: float, counts: dict[str, dict[str, dict[str, int]]],
          ends_in: dict[str, float]) -> list[JobView]:
    jobs = []
    for role, parts in counts.items():
        for part, states in parts.items():
            for state in STATES:
                for i in range(states.get(state, 0)):
                    job_id = f"{role}-{part}-{state}-{i}"
                    submitted = now - 1000.0 + i
                    started = None if state == "pending" else submitted + 60.0
                    ends = None if started is None else now + ends_in.get(job_id, 3 * 3600.0)
                    jobs.append(JobView(job_id, role, part, state, submitted, started, ends))
    return jobs
