"""The token-velocity estimator: rates on known arrival sequences, expiry, and agreement with a
brute-force count over random sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsslurm.policy.velocity import VelocityEstimator

pytestmark = pytest.mark.timeout(60)


def _spread(input_tokens: int, output_tokens: float, column: int = 0) -> tuple[float, ...]:
    spread = [0.0, 0.0, 0.0]
    spread[column] = input_tokens + output_tokens
    return tuple(spread)


def test_steady_arrivals_give_their_rate_in_every_window() -> None:
    estimator = VelocityEstimator(3, 3, origin=0.0, windows_s=(10.0, 60.0))
    for k in range(1, 241):  # one request every 0.5 s for 120 s
        estimator.add(k * 0.5, 1000, 0, _spread(1000, 200.0, column=1))
    short, long = estimator.rates(120.0)
    for rates in (short, long):
        assert rates.requests_per_s == pytest.approx(2.0)
        assert rates.input_tokens_per_s == pytest.approx(2000.0)
        assert rates.predicted_output_tokens_per_s == pytest.approx(400.0)
        assert rates.bucket_tokens_per_s[0][1] == pytest.approx(2400.0)
        assert rates.bucket_tokens_per_s[0][0] == 0.0
    assert (short.window_s, long.window_s) == (10.0, 60.0)


def test_a_burst_shows_in_the_short_window_only() -> None:
    estimator = VelocityEstimator(3, 3, origin=0.0, windows_s=(10.0, 300.0))
    for k in range(1, 291):
        estimator.add(float(k), 1000, 0, _spread(1000, 0.0))
    for k in range(1, 101):
        estimator.add(290.0 + k * 0.05, 1000, 0, _spread(1000, 0.0))
    short, long = estimator.rates(300.0)
    assert short.requests_per_s == pytest.approx(100 / 10.0)
    assert long.requests_per_s == pytest.approx((290 + 100) / 300.0)


def test_rates_before_a_full_window_use_the_time_observed() -> None:
    estimator = VelocityEstimator(3, 3, origin=100.0, windows_s=(10.0, 300.0))
    for k in range(20):
        estimator.add(100.0 + k, 500, 2, _spread(500, 0.0))
    short, long = estimator.rates(120.0)
    assert long.requests_per_s == pytest.approx(20 / 20.0)
    assert short.requests_per_s == pytest.approx(9 / 10.0)  # arrivals 111..119
    assert long.bucket_tokens_per_s[2][0] == pytest.approx(500.0)


def test_windows_empty_out_exactly() -> None:
    estimator = VelocityEstimator(3, 3, windows_s=(10.0,))
    for k in range(1000):
        estimator.add(k * 0.01, 7, 1, (0.1 * 7, 0.3 * 7, 0.6 * 7))
    (rates,) = estimator.rates(100.0)
    assert rates.requests_per_s == 0.0
    assert rates.input_tokens_per_s == 0.0
    assert all(cell == 0.0 for row in rates.bucket_tokens_per_s for cell in row)


def test_time_going_backwards_is_refused() -> None:
    estimator = VelocityEstimator(3, 3)
    estimator.add(5.0, 10, 0, _spread(10, 0.0))
    with pytest.raises(ValueError, match="backwards"):
        estimator.add(4.0, 10, 0, _spread(10, 0.0))


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        VelocityEstimator(3, 3, windows_s=(0.0,))


arrivals = st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 5000), st.integers(0, 2)),
                    min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(arrivals, st.floats(0.0, 40.0))
def test_rates_match_a_brute_force_count(gaps: list[tuple[float, int, int]], later: float) -> None:
    windows = (3.0, 30.0)
    estimator = VelocityEstimator(3, 3, origin=0.0, windows_s=windows)
    events, now = [], 0.0
    for gap, tokens, bucket in gaps:
        now += gap
        estimator.add(now, tokens, bucket, _spread(tokens, tokens / 2))
        events.append((now, tokens, bucket))
    now += later
    for window, got in zip(windows, estimator.rates(now)):
        inside = [e for e in events if e[0] > now - window]
        span = min(window, max(now, 1.0))
        assert got.requests_per_s == pytest.approx(len(inside) / span)
        assert got.input_tokens_per_s == pytest.approx(sum(e[1] for e in inside) / span)
        for bucket in range(3):
            expected = sum(1.5 * e[1] for e in inside if e[2] == bucket) / span
            assert got.bucket_tokens_per_s[bucket][0] == pytest.approx(expected, abs=1e-6)
