"""Synthetic traces for tests and benchmarks: Poisson arrivals at a constant rate, constant
arrivals (deterministic closed-form cases), on/off bursts, and lognormal length mixes shaped like
the Azure conversation trace. Every generator takes a seed. Pure: no I/O."""

from __future__ import annotations

import numpy as np

from tsslurm.sim.trace import Trace, TraceError, make_trace

CONV_INPUT_MEAN, CONV_INPUT_SIGMA = 1155.0, 0.9
CONV_OUTPUT_MEAN, CONV_OUTPUT_SIGMA = 211.0, 1.0
"""Means of the Azure conv trace (../shared/traces/README.md); sigmas give its p99s roughly."""


def constant(rate_per_s: float, duration_s: float, input_tokens: int,
             output_tokens: int, name: str = "constant") -> Trace:
    """Requests every 1/rate seconds, all the same shape: the deterministic test case."""
    count = int(rate_per_s * duration_s)
    if count <= 0:
        raise TraceError("a constant trace needs rate x duration >= 1")
    arrival = np.arange(count, dtype=np.float64) / rate_per_s
    return Trace(name, arrival, np.full(count, input_tokens, dtype=np.int64),
                 np.full(count, output_tokens, dtype=np.int64))


def poisson(rate_per_s: float, count: int, seed: int, input_mean: float = CONV_INPUT_MEAN,
            output_mean: float = CONV_OUTPUT_MEAN, max_input: int = 8000,
            max_output: int = 1000, name: str = "poisson") -> Trace:
    """`count` requests with exponential inter-arrivals and lognormal lengths (conv-like)."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate_per_s, count))
    return make_trace(name, arrival, _lognormal(rng, input_mean, CONV_INPUT_SIGMA, count, max_input),
                      _lognormal(rng, output_mean, CONV_OUTPUT_SIGMA, count, max_output))


def bursty(base_rate_per_s: float, burst_rate_per_s: float, period_s: float, burst_s: float,
           duration_s: float, seed: int, name: str = "bursty") -> Trace:
    """Poisson at `base_rate` with a burst at `burst_rate` for `burst_s` of every `period_s`."""
    rng = np.random.default_rng(seed)
    times: list[np.ndarray] = []
    start = 0.0
    while start < duration_s:
        quiet = min(period_s - burst_s, duration_s - start)
        times.append(start + _poisson_times(rng, base_rate_per_s, quiet))
        loud = min(burst_s, max(0.0, duration_s - start - quiet))
        times.append(start + quiet + _poisson_times(rng, burst_rate_per_s, loud))
        start += period_s
    arrival = np.concatenate(times)
    count = len(arrival)
    return make_trace(name, arrival, _lognormal(rng, CONV_INPUT_MEAN, CONV_INPUT_SIGMA, count, 8000),
                      _lognormal(rng, CONV_OUTPUT_MEAN, CONV_OUTPUT_SIGMA, count, 1000))


def _poisson_times(rng: np.random.Generator, rate: float, span: float) -> np.ndarray:
    if span <= 0 or rate <= 0:
        return np.empty(0)
    return np.sort(rng.uniform(0.0, span, rng.poisson(rate * span)))


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, count: int,
               largest: int) -> np.ndarray:
    mu = np.log(mean) - sigma * sigma / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, count)), 1, largest).astype(np.int64)
