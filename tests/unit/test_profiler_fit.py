"""The profiler's arithmetic on synthetic measurements made from known models (seeded noise):
the lockstep window recovers a step time, the step-model regression recovers its coefficients and
never goes negative, the saturation rule and the line fits behave as documented."""

from __future__ import annotations

import random

import pytest

from tsslurm.perfmodel import decode_step_seconds
from tsslurm.profile.schema import DecodeStep
from tsslurm.profiler.fit import (
    MeasurementError,
    fit_decode_step,
    kv_transfer_velocity,
    lockstep_sample,
    prefill_overhead_ms,
    prefill_saturated,
    prefill_velocity,
)
from tsslurm.profiler.results import LockstepSample, PrefillLevel, PullSample

pytestmark = pytest.mark.timeout(30)


def streams_of(batch: int, output: int, step_s: float, rng: random.Random,
               start_spread_s: float = 0.0, coalesce: int = 1) -> list[list[tuple[float, int]]]:
    """Requests decoding in lockstep: each starts within `start_spread_s`, then one token per
    step (delivered `coalesce` at a time, as a busy client would see them)."""
    streams = []
    for _ in range(batch):
        start = rng.uniform(0, start_spread_s)
        stamps = [(start + k * step_s + rng.gauss(0, step_s * 0.02), 1) for k in range(output)]
        merged = [(stamps[min(i + coalesce, output) - 1][0], min(coalesce, output - i))
                  for i in range(0, output, coalesce)]
        streams.append(merged)
    return streams


@pytest.mark.parametrize("coalesce", [1, 3])
def test_lockstep_window_recovers_the_step(coalesce: int) -> None:
    rng = random.Random(1)
    sample = lockstep_sample(streams_of(16, 64, 0.010, rng, 0.002, coalesce), 100, 64)
    assert sample.step_s == pytest.approx(0.010, rel=0.05)
    assert sample.batch == 16 and 55 <= sample.steps <= 64
    assert 16 * 100 < sample.context_tokens < 16 * 164


def test_lockstep_context_counts_tokens_made_by_the_middle_of_the_window() -> None:
    streams = [[(float(k), 1) for k in range(11)] for _ in range(4)]
    sample = lockstep_sample(streams, 50, 11)
    assert sample.step_s == pytest.approx(1.0)
    assert sample.context_tokens == 4 * (50 + 6)


def test_a_batch_that_never_ran_together_is_refused() -> None:
    early = [(float(k), 1) for k in range(5)]
    late = [(10.0 + k, 1) for k in range(5)]
    with pytest.raises(MeasurementError, match="lockstep"):
        lockstep_sample([early, late], 10, 5)
    with pytest.raises(MeasurementError, match="no output"):
        lockstep_sample([early, []], 10, 5)


def synthetic_samples(step: DecodeStep, noise: float, seed: int) -> list[LockstepSample]:
    rng = random.Random(seed)
    samples = []
    for batch in (1, 4, 16, 64, 128):
        for length in (129, 641, 1537):
            context = batch * (length + 16)
            seconds = decode_step_seconds(batch, context, step) * (1 + rng.gauss(0, noise))
            samples.append(LockstepSample(batch=batch, input_tokens=length, output_tokens=32,
                                          step_s=seconds, context_tokens=context, steps=30))
    return samples


def test_the_step_regression_recovers_known_coefficients() -> None:
    truth = DecodeStep(base_ms=4.0, per_sequence_ms=0.12, per_context_token_us=0.3)
    fit = fit_decode_step(synthetic_samples(truth, noise=0.03, seed=7))
    assert fit.step.base_ms == pytest.approx(4.0, rel=0.1)
    assert fit.step.per_sequence_ms == pytest.approx(0.12, rel=0.25)
    assert fit.step.per_context_token_us == pytest.approx(0.3, rel=0.15)
    assert fit.r_squared > 0.95 and fit.rms_relative_error < 0.06 and fit.samples == 15


def test_the_step_regression_keeps_every_coefficient_non_negative() -> None:
    flat = DecodeStep(base_ms=5.0, per_sequence_ms=0.2, per_context_token_us=0.0)
    samples = synthetic_samples(flat, noise=0.05, seed=3)
    fit = fit_decode_step(samples)
    assert fit.step.base_ms > 0
    assert fit.step.per_sequence_ms >= 0 and fit.step.per_context_token_us >= 0
    for sample in samples:
        predicted = decode_step_seconds(sample.batch, sample.context_tokens, fit.step)
        assert predicted == pytest.approx(sample.step_s, rel=0.2)


def test_the_step_regression_needs_three_runs() -> None:
    truth = DecodeStep(base_ms=4.0)
    with pytest.raises(MeasurementError, match="3 or more"):
        fit_decode_step(synthetic_samples(truth, 0.0, 1)[:2])


def level(concurrency: int, tokens_per_s: float, tokens: int = 640) -> PrefillLevel:
    return PrefillLevel(concurrency=concurrency, input_tokens=tokens,
                        seconds=concurrency * tokens / tokens_per_s)


def test_saturation_needs_full_batches_and_a_flat_doubling() -> None:
    batch_tokens = 2048
    assert not prefill_saturated([level(1, 20000)], batch_tokens)
    assert not prefill_saturated([level(1, 20000), level(2, 20100)], batch_tokens), \
        "two prompts in flight do not fill two batches: a flat step there is not saturation"
    assert not prefill_saturated([level(4, 25000), level(8, 30000)], batch_tokens)
    assert prefill_saturated([level(8, 30000), level(16, 31000)], batch_tokens)


def test_prefill_velocity_is_the_plateau_not_a_lucky_peak() -> None:
    levels = [level(1, 20000), level(2, 26000), level(4, 33000), level(8, 34000),
              level(16, 36000)]
    assert prefill_velocity(levels) == pytest.approx(34000)


def test_prefill_overhead_is_the_intercept_of_single_prefills() -> None:
    singles = [PrefillLevel(concurrency=1, input_tokens=n, seconds=0.005 + n / 30000)
               for n in (128, 640, 1536)]
    assert prefill_overhead_ms(singles) == pytest.approx(5.0, rel=1e-6)


def test_kv_transfer_velocity_is_the_inverse_slope() -> None:
    pulls = [PullSample(requests=k, input_tokens=1537, seconds=0.015 + k * 1537 / 300000,
                        pulled_tokens=k * 1537) for k in (1, 4, 16)]
    velocity, latency = kv_transfer_velocity(pulls)
    assert velocity == pytest.approx(300000, rel=1e-6)
    assert latency == pytest.approx(0.015, rel=1e-6)


def test_kv_transfer_velocity_falls_back_to_the_best_rate_when_the_slope_is_noise() -> None:
    pulls = [PullSample(requests=k, input_tokens=1000, seconds=s, pulled_tokens=k * 1000)
             for k, s in ((1, 0.05), (4, 0.04), (16, 0.04))]
    velocity, latency = kv_transfer_velocity(pulls)
    assert velocity == pytest.approx(16000 / 0.04) and latency == 0.0
