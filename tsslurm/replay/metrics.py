"""A replay's figures in the JSON shape of `tsslurm simulate`: per-request outcomes from what the
client measured, SLO accounting by the simulator's own code (`tsslurm.sim.run.request_figures`),
GPU time from the broker's job records (GPUs x time from Slurm start to end, clipped to the
replay), and the oracle bounds of the same trace. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsslurm.broker.store import JobRecord
from tsslurm.profile.schema import Profile
from tsslurm.sim.run import oracle_bounds, request_figures
from tsslurm.sim.slo import KILLED, REJECTED, SERVED, UNFINISHED, Outcomes
from tsslurm.sim.trace import Trace

REJECTED_CODES = frozenset({"bad_request", "too_long", "unknown_model"})
"""Broker error codes for a request no deployment could serve (the simulator's `rejected`)."""


@dataclass(frozen=True)
class Measured:
    """One sent request as the client saw it: seconds from the replay's start."""

    index: int
    sent_s: float
    ttft_s: float | None = None
    latency_s: float | None = None
    tokens: int = 0
    error_code: str | None = None
    """None when answered; a broker error code, or "unfinished" when no answer came."""


def status_of(measured: Measured) -> int:
    if measured.error_code is None:
        return SERVED
    if measured.error_code in REJECTED_CODES:
        return REJECTED
    return UNFINISHED if measured.error_code == "unfinished" else KILLED


def outcomes(trace: Trace, measured: Iterable[Measured]) -> Outcomes:
    """The simulator's Outcomes: first token and finish at the trace's arrival plus the latencies
    the client measured from its send (a late send does not count against the deployment).
    Requests never sent stay unfinished."""
    result = Outcomes.empty(len(trace))
    for m in measured:
        status = status_of(m)
        result.status[m.index] = status
        if status == SERVED and m.ttft_s is not None and m.latency_s is not None:
            result.first_token_s[m.index] = trace.arrival_s[m.index] + m.ttft_s
            result.finish_s[m.index] = trace.arrival_s[m.index] + m.latency_s
        elif status == SERVED:
            result.status[m.index] = KILLED
    return result


def gpu_seconds(jobs: Iterable[JobRecord], profile: Profile, start: float, end: float) -> float:
    """GPUs x (Slurm start to end) of every job, clipped to [start, end] (wall-clock seconds);
    a job not ended yet is billed until `end`."""
    gpus = {p.name: p.gpus_per_instance for p in profile.partitions}
    total = 0.0
    for job in jobs:
        if job.started_at is None:
            continue
        stop = job.ended_at if job.ended_at is not None else end
        total += gpus.get(job.partition, 1) * max(0.0, min(stop, end) - max(job.started_at, start))
    return total


def job_counts(jobs: Iterable[JobRecord], start: float, end: float) -> dict[str, int]:
    """As the simulator counts them: jobs submitted during the replay, jobs cancelled during it
    before they served (drained ones are not counted), and jobs Slurm ended at their time limit."""
    listed = list(jobs)
    ended = [j for j in listed if j.ended_at is not None and start <= j.ended_at <= end]
    return {
        "jobs_submitted": sum(1 for j in listed if (j.submitted_at or 0.0) >= start),
        "jobs_cancelled": sum(1 for j in ended if j.ready_at is None),
        "jobs_timed_out": sum(1 for j in ended if "TIMEOUT" in j.reason.upper()),
    }


def send_lag(trace: Trace, measured: Iterable[Measured]) -> dict[str, float | None]:
    """How late the sender was against the schedule (ms): the driver's own delay, not the
    deployment's."""
    lags = np.array([m.sent_s - trace.arrival_s[m.index] for m in measured])
    if not len(lags):
        return {"send_lag_p50_ms": None, "send_lag_p99_ms": None, "send_lag_max_ms": None}
    return {f"send_lag_{name}_ms": round(float(value) * 1000.0, 3) for name, value in
            (("p50", np.percentile(lags, 50)), ("p99", np.percentile(lags, 99)),
             ("max", lags.max()))}


def policy_figures(trace: Trace, profile: Profile, measured: list[Measured],
                   jobs: list[JobRecord], start: float, run_s: float) -> dict[str, Any]:
    """One policy's figures as `tsslurm simulate` reports them (same keys)."""
    figures, _ = request_figures(trace, profile, outcomes(trace, measured),
                                 gpu_seconds(jobs, profile, start, start + run_s))
    figures.update(job_counts(jobs, start, start + run_s))
    figures["run_s"] = round(run_s, 3)
    figures["seeds"] = 1
    return figures


def report(trace: Trace, profile: Profile, policy: str, figures: dict[str, Any], *,
           seed: int, rate_scale: float, speedup: float,
           replay: dict[str, Any]) -> dict[str, Any]:
    """The whole JSON document: simulate's layout, plus a `replay` section (how it ran)."""
    oracle = oracle_bounds(trace, profile)
    for key, bound in (("cost_vs_oracle", "oracle"), ("cost_vs_oracle_startup", "oracle_startup")):
        hours = oracle[bound]["gpu_hours"]
        figures[key] = round(figures["gpu_hours"] / hours, 4) if hours > 0 else None
    return {
        "trace": trace.name,
        "profile": profile.deployment,
        "requests": len(trace),
        "seeds": [seed],
        "rate_scale": round(rate_scale, 6),
        "speedup": speedup,
        "policies": {policy: figures},
        "oracle": oracle["oracle"],
        "oracle_startup": oracle["oracle_startup"],
        "replay": replay,
    }
