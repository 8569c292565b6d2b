"""Running simulations: one policy on one trace and seed, then several policies and seeds (in up to
two worker processes), averaged over seeds, with the oracle bounds next to them.

The result is a plain dict in the JSON layout of `tsslurm simulate` (report.py writes it):
per policy under "policies" the SLO and cost figures, and "oracle" / "oracle_startup" bounds.
Pure apart from the worker processes: no file I/O."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsslurm.policy.registry import POLICIES, _load_builtin
from tsslurm.policy.runner import PolicyRunner
from tsslurm.profile.schema import Profile
from tsslurm.sim.engine import Simulation
from tsslurm.sim.oracle import bounds
from tsslurm.sim.results import RunResult, SimConfig
from tsslurm.sim.slo import (
    KILLED,
    REJECTED,
    SERVED,
    UNFINISHED,
    Attainment,
    Outcomes,
    attainment,
    summary,
)
from tsslurm.sim.trace import Trace

AVERAGED = ("slo_attainment", "ttft_attainment", "tpot_attainment", "gpu_hours", "ttft_p50_ms",
            "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "jobs_submitted", "jobs_cancelled",
            "requests_killed", "requests_unfinished", "requests_rejected", "run_s",
            "slo_after_warmup", "gpu_hours_after_warmup")


@dataclass(frozen=True)
class PolicyRun:
    """One policy's run: the JSON figures and what the plot and the bound check need."""

    figures: dict[str, Any]
    meets: np.ndarray
    ttft_ms: np.ndarray
    timeline: dict[str, Any]


def policy_names(spec: str) -> list[str]:
    """`all`, or names (and `name@key=value` references) separated by commas."""
    if spec.strip() == "all":
        _load_builtin()
        return sorted(POLICIES)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        from tsslurm.sim.trace import TraceError

        raise TraceError("no policy given: --policy NAME[,NAME...] or all")
    return names


def make_runner(ref: str, profile: Profile) -> PolicyRunner:
    """The policy's runner; the profile's params apply when it names the same policy."""
    name = ref.split("@", 1)[0].strip()
    params = profile.policy.params if name == profile.policy.name else {}
    return PolicyRunner.from_ref(ref, params)


def run_policy(trace: Trace, profile: Profile, ref: str, seed: int = 0,
               progress: Callable[[float], None] | None = None,
               config: SimConfig | None = None) -> PolicyRun:
    config = config or SimConfig(seed=seed)
    if config.seed != seed:
        config = SimConfig(**{**config.__dict__, "seed": seed})
    result = Simulation(trace, profile, make_runner(ref, profile), config, progress).run()
    run = _figures(trace, profile, result)
    if config.warmup_s > 0:
        late = trace.arrival_s >= config.warmup_s
        after = result.cluster.gpu_seconds(result.end_s, config.warmup_s)
        run.figures.update({"warmup_s": config.warmup_s,
                            "slo_after_warmup": round(float(run.meets[late].mean()), 6)
                            if late.any() else None,
                            "gpu_hours_after_warmup": round(after / 3600.0, 6)})
    return run


def request_figures(trace: Trace, profile: Profile, outcomes: Outcomes,
                    gpu_seconds: float) -> tuple[dict[str, Any], Attainment]:
    """The SLO, latency, request-count and GPU-hour figures of one run (also `tsslurm replay`'s,
    so both commands account SLOs in one place)."""
    met = attainment(outcomes, trace.arrival_s, trace.input_tokens, trace.output_tokens,
                     profile.slo)
    status = outcomes.status
    figures: dict[str, Any] = {
        **summary(met, outcomes, trace.output_tokens),
        "gpu_hours": round(gpu_seconds / 3600.0, 6),
        "requests": len(trace),
        "requests_served": int((status == SERVED).sum()),
        "requests_rejected": int((status == REJECTED).sum()),
        "requests_killed": int((status == KILLED).sum()),
        "requests_unfinished": int((status == UNFINISHED).sum()),
    }
    figures["slo_attainment"] = round(figures["slo_attainment"], 6)
    return figures, met


def _figures(trace: Trace, profile: Profile, result: RunResult) -> PolicyRun:
    outcomes = result.outcomes
    figures, met = request_figures(trace, profile, outcomes,
                                   result.cluster.gpu_seconds(result.end_s))
    figures.update({"jobs_submitted": result.cluster.submitted,
                    "jobs_cancelled": result.cluster.cancelled,
                    "jobs_timed_out": result.cluster.timed_out,
                    "run_s": round(result.end_s, 3)})
    status = outcomes.status
    timeline = {"time_s": result.timeline.time_s, "counts": result.timeline.counts,
                "ready_prefill_tokens_per_s": result.timeline.ready_prefill_tokens_per_s}
    ttft_ms = np.where(status == SERVED, met.ttft_s * 1000.0, np.nan)
    return PolicyRun(figures, met.meets, ttft_ms, timeline)


def run_all(trace: Trace, profile: Profile, refs: list[str], seeds: list[int],
            processes: int = 2, progress: Callable[[str, float], None] | None = None,
            config: SimConfig | None = None) -> dict[str, list[PolicyRun]]:
    """Every (policy, seed) run; in `processes` worker processes when there are several runs."""
    jobs = [(ref, seed) for ref in refs for seed in seeds]
    if processes <= 1 or len(jobs) == 1:
        runs = [run_policy(trace, profile, ref, seed, _bind(progress, ref), config)
                for ref, seed in jobs]
    else:
        workers = min(processes, len(jobs), os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_policy, trace, profile, ref, seed, None, config)
                       for ref, seed in jobs]
            runs = []
            for (ref, _), future in zip(jobs, futures):
                runs.append(future.result())
                if progress is not None:
                    progress(ref, float("inf"))
    grouped: dict[str, list[PolicyRun]] = {ref: [] for ref in refs}
    for (ref, _), run in zip(jobs, runs):
        grouped[ref].append(run)
    return grouped


def _bind(progress: Callable[[str, float], None] | None,
          ref: str) -> Callable[[float], None] | None:
    if progress is None:
        return None
    return lambda now: progress(ref, now)


def average(runs: list[PolicyRun]) -> dict[str, Any]:
    """The figures of one policy averaged over its seeds (`seeds` says how many)."""
    first = dict(runs[0].figures)
    for key in AVERAGED:
        values = [r.figures[key] for r in runs if r.figures.get(key) is not None]
        if values:
            first[key] = round(float(np.mean(values)), 6)
    first["seeds"] = len(runs)
    return first


def oracle_bounds(trace: Trace, profile: Profile,
                  config: SimConfig | None = None) -> dict[str, dict[str, Any]]:
    """Both oracle bounds as the report shows them (also for `tsslurm replay`, whose deployment
    starts warm like the simulator's)."""
    return bounds(trace, profile, pool_floor=(config or SimConfig()).warm_start)


def warmup_bounds(trace: Trace, profile: Profile, config: SimConfig) -> dict[str, dict[str, Any]]:
    """Both bounds over what comes after the warm-up (empty without one)."""
    if config.warmup_s <= 0:
        return {}
    after = bounds(trace, profile, pool_floor=config.warm_start, from_s=config.warmup_s)
    return {f"{name}_after_warmup": figures for name, figures in after.items()}


def simulate(trace: Trace, profile: Profile, refs: list[str], seeds: list[int],
             processes: int = 2, progress: Callable[[str, float], None] | None = None,
             config: SimConfig | None = None) -> tuple[dict[str, Any], dict[str, list[PolicyRun]]]:
    """The report dict of `tsslurm simulate` and the runs behind it (for plots)."""
    grouped = run_all(trace, profile, refs, seeds, processes, progress, config)
    oracle = oracle_bounds(trace, profile, config)
    report = {
        "trace": trace.name,
        "profile": profile.deployment,
        "requests": len(trace),
        "seeds": seeds,
        "policies": {ref: average(runs) for ref, runs in grouped.items()},
        "oracle": oracle["oracle"],
        "oracle_startup": oracle["oracle_startup"],
    }
    for figures in report["policies"].values():
        figures["cost_vs_oracle"] = _ratio(figures["gpu_hours"], oracle["oracle"]["gpu_hours"])
        figures["cost_vs_oracle_startup"] = _ratio(figures["gpu_hours"],
                                                   oracle["oracle_startup"]["gpu_hours"])
    report.update(warmup_bounds(trace, profile, config or SimConfig()))
    for figures in report["policies"].values():
        if "oracle_startup_after_warmup" in report and "gpu_hours_after_warmup" in figures:
            figures["cost_after_warmup_vs_oracle_startup"] = _ratio(
                figures["gpu_hours_after_warmup"],
                report["oracle_startup_after_warmup"]["gpu_hours"])
    return report, grouped


def _ratio(cost: float, bound: float) -> float | None:
    return round(cost / bound, 4) if bound > 0 else None
