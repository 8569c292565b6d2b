"""tokenscale's one fixed parameter set on traces it was not tuned on: synthetic shapes (Poisson,
on/off bursts, a diurnal swing, a BurstGPT-like gamma-modulated rate), the Mixed trace of the two
Azure traces at equal request rates, and other time windows of the Azure traces, each against every baseline's knob sweep (as benchmarks/policy_sweep.py).

    .venv/bin/python benchmarks/policy_robustness.py --out docs/policies/robustness

Synthetic traces are seeded; lengths are lognormal with the Azure conv trace's means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from policy_sweep import BASELINES, compare, plot, run_scenario, run_trace, sweep_refs, table

from tsslurm.profile import load_profile
from tsslurm.sim.synthetic import (
    CONV_INPUT_MEAN,
    CONV_INPUT_SIGMA,
    CONV_OUTPUT_MEAN,
    CONV_OUTPUT_SIGMA,
    bursty,
    poisson,
)
from tsslurm.sim.trace import Trace, make_trace

HOUR_S = 3600.0
AZURE = "../shared/traces/AzureLLMInferenceTrace_{}.csv"


def modulated(rates_per_s: np.ndarray, step_s: float, seed: int, name: str) -> Trace:
    """Poisson arrivals whose rate is rates_per_s[k] during [k step_s, (k + 1) step_s)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rates_per_s * step_s)
    starts = np.repeat(np.arange(len(rates_per_s)) * step_s, counts)
    arrival = np.sort(starts + rng.uniform(0.0, step_s, counts.sum()))
    n = len(arrival)
    return make_trace(name, arrival, _lognormal(rng, CONV_INPUT_MEAN, CONV_INPUT_SIGMA, n, 8000),
                      _lognormal(rng, CONV_OUTPUT_MEAN, CONV_OUTPUT_SIGMA, n, 1000))


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int, top: int) -> np.ndarray:
    mu = np.log(mean) - sigma * sigma / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), 1, top).astype(np.int64)


def synthetic_traces(seed: int = 7) -> list[Trace]:
    steps = np.arange(0.0, HOUR_S, 10.0)
    diurnal = 12.0 + 10.0 * np.sin(2 * np.pi * steps / HOUR_S - np.pi / 2)
    gamma = np.random.default_rng(seed).gamma(0.5, 2.0, len(steps) // 3).repeat(3) * 10.0
    return [
        poisson(12.0, int(12 * HOUR_S), seed, name="poisson-12rps"),
        bursty(6.0, 40.0, period_s=300.0, burst_s=30.0, duration_s=HOUR_S, seed=seed,
               name="onoff-6-40rps"),
        modulated(diurnal, 10.0, seed, "diurnal-2-22rps"),
        modulated(gamma[: len(steps)], 10.0, seed, "burstgpt-like-gamma"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="llama3-8b-a100")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    refs = sweep_refs(BASELINES)
    reports = []
    for trace in synthetic_traces():
        report = run_trace(trace, profile, refs)
        report["label"] = "synthetic"
        reports.append(report)
        _print(report)
    mixed = run_scenario(f"{AZURE.format('conv')},{AZURE.format('code')}", None, args.profile,
                         refs)
    mixed["label"] = "Mixed conv + code, equal request rates"
    reports.append(mixed)
    _print(mixed)
    for name, window in (("conv", "1800:3500"), ("code", "1200:3400")):
        report = run_scenario(AZURE.format(name), 16.0, args.profile, refs, window)
        report["label"] = f"window {window}, peak 16"
        reports.append(report)
        _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(reports, indent=1, sort_keys=True))
    plot(reports, args.out.with_suffix(".png"))


def _print(report: dict) -> None:
    print(f"\n## {report['trace']} ({report['label']})\n")
    print("\n".join(table(report)))
    print("\n".join(compare(report)), flush=True)


if __name__ == "__main__":
    main()
