"""The profiler's arithmetic: a lockstep batch's decode step from its token timestamps, the decode
step model by non-negative least squares, straight-line fits for prefill and KV pulls, and the
stop rule of the prefill saturation sweep. Pure: no I/O, no clock."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import msgspec
import numpy as np

from tsslurm.profile.schema import DecodeStep
from tsslurm.profiler.results import LockstepSample, PrefillLevel, PullSample

SATURATION_GROWTH = 0.05
"""A prefill level that adds less than 5 % throughput over the previous one is on the plateau."""

Stamps = Sequence[tuple[float, int]]
"""One request's stream: (arrival time in seconds, tokens in that output)."""


class MeasurementError(ValueError):
    """Measurements that cannot give the figure asked for (says which and why)."""


class StepFit(msgspec.Struct, frozen=True):
    step: DecodeStep
    samples: int
    r_squared: float
    rms_relative_error: float


def lockstep_sample(streams: Sequence[Stamps], input_tokens: int,
                    output_tokens: int) -> LockstepSample:
    """The decode step of a batch started together: the window runs from the last request's first
    token to the first request's last token (every request decoding throughout); the step is the
    window over the tokens each request produced in it, on average."""
    if not streams or any(not stream for stream in streams):
        raise MeasurementError("a request of the lockstep batch produced no output")
    first = max(stream[0][0] for stream in streams)
    last = min(stream[-1][0] for stream in streams)
    made = [_tokens_by(stream, last) - _tokens_by(stream, first) for stream in streams]
    steps = sum(made) / len(made)
    if last <= first or steps < 1:
        raise MeasurementError(f"a batch of {len(streams)} did not decode in lockstep (its first "
                               f"request finished before its last one started)")
    middle = (first + last) / 2
    context = sum(input_tokens + _tokens_by(stream, middle) for stream in streams)
    return LockstepSample(batch=len(streams), input_tokens=input_tokens,
                          output_tokens=output_tokens, step_s=(last - first) / steps,
                          context_tokens=context, steps=steps)


def _tokens_by(stream: Stamps, moment: float) -> int:
    return sum(tokens for at, tokens in stream if at <= moment)


def fit_decode_step(samples: Sequence[LockstepSample]) -> StepFit:
    """base_ms + per_sequence_ms x batch + per_context_token_us x context, fitted to the step
    times with relative weights (a 10 % miss counts alike at 4 ms and at 80 ms), every
    coefficient kept non-negative: the best fit over the subsets of the two slope terms."""
    if len(samples) < 3:
        raise MeasurementError(f"the decode step model needs 3 or more runs, got {len(samples)}")
    y = np.array([s.step_s * 1000 for s in samples])
    features = np.array([[1.0, s.batch, s.context_tokens / 1000] for s in samples])
    best: tuple[float, np.ndarray] | None = None
    for chosen in _subsets():
        coefficients = _weighted_lstsq(features[:, chosen], y)
        if coefficients[0] <= 0 or any(c < 0 for c in coefficients):
            continue
        full = np.zeros(3)
        full[list(chosen)] = coefficients
        error = _relative_sse(features @ full, y)
        if best is None or error < best[0]:
            best = (error, full)
    full = best[1] if best is not None else np.array([float(y.min()), 0.0, 0.0])
    step = DecodeStep(base_ms=_round(full[0]), per_sequence_ms=_round(full[1]),
                      per_context_token_us=_round(full[2]))
    return StepFit(step, len(samples), _r_squared(features @ full, y),
                   math.sqrt(_relative_sse(features @ full, y) / len(y)))


def _subsets() -> list[tuple[int, ...]]:
    return [(0, *extra) for size in (2, 1, 0) for extra in itertools.combinations((1, 2), size)]


def _weighted_lstsq(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    weights = 1.0 / y
    solution, *_ = np.linalg.lstsq(features * weights[:, None], y * weights, rcond=None)
    return solution


def _relative_sse(predicted: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(((predicted - y) / y) ** 2))


def _r_squared(predicted: np.ndarray, y: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else 1.0


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; needs two distinct xs."""
    if len(set(xs)) < 2:
        raise MeasurementError("a straight-line fit needs measurements at two sizes or more")
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def prefill_saturated(levels: Sequence[PrefillLevel], batch_tokens: int) -> bool:
    """True once the offered prefill load fills the engine's batches (more than two batches'
    worth of tokens in flight) and the last doubling of it added under SATURATION_GROWTH."""
    if len(levels) < 2:
        return False
    last, before = levels[-1], levels[-2]
    in_flight = last.concurrency * last.input_tokens
    return in_flight >= 2 * batch_tokens and \
        last.tokens_per_s < (1 + SATURATION_GROWTH) * before.tokens_per_s


def prefill_velocity(levels: Sequence[PrefillLevel]) -> float:
    """V_P: the plateau of the sweep, the median of the levels within 10 % of the best."""
    if not levels:
        raise MeasurementError("no prefill measurements")
    best = max(level.tokens_per_s for level in levels)
    plateau = sorted(level.tokens_per_s for level in levels if level.tokens_per_s >= 0.9 * best)
    return float(np.median(plateau))


def prefill_overhead_ms(singles: Sequence[PrefillLevel]) -> float:
    """The fixed cost of one prefill: the intercept of single prompts' time over their length."""
    intercept, _ = fit_line([s.input_tokens for s in singles], [s.seconds for s in singles])
    return max(0.0, intercept * 1000)


def kv_transfer_velocity(pulls: Sequence[PullSample]) -> tuple[float, float]:
    """(V_N tokens/s, fixed latency s): the inverse slope of pull time over tokens pulled; the
    best observed rate when the slope is lost in noise."""
    tokens = [p.requests * p.input_tokens for p in pulls]
    seconds = [p.seconds for p in pulls]
    intercept, slope = fit_line(tokens, seconds)
    if slope <= 0:
        return max(t / s for t, s in zip(tokens, seconds)), 0.0
    return 1.0 / slope, max(0.0, intercept)
