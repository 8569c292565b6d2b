"""The output-length predictor: a prior before anything finished, per-input-class histories,
a bounded memory, forecasts spread over the output buckets."""

from __future__ import annotations

import random

import pytest

from tsslurm.policy.predictor import OutputPredictor

pytestmark = pytest.mark.timeout(60)
EDGES = [128, 512]


def test_before_any_finish_the_prior_stands_in() -> None:
    forecast = OutputPredictor(EDGES, prior_output_tokens=300).predict(1000)
    assert forecast.shares == (0.0, 1.0, 0.0)
    assert forecast.mean == pytest.approx(300.0)


def test_each_input_class_learns_its_own_output_lengths() -> None:
    predictor = OutputPredictor(EDGES, min_samples=5)
    for _ in range(10):
        predictor.learn(100, 20)
        predictor.learn(3000, 700)
    assert predictor.predict(110).mean == pytest.approx(20.0)
    assert predictor.predict(3000).likeliest_bucket == 2


def test_a_thin_class_borrows_from_all_requests() -> None:
    predictor = OutputPredictor(EDGES, min_samples=5)
    for _ in range(10):
        predictor.learn(100, 20)
    predictor.learn(5000, 900)
    assert predictor.predict(5000).mean == pytest.approx((10 * 20 + 900) / 11)


def test_only_the_last_history_requests_count() -> None:
    predictor = OutputPredictor(EDGES, history=50, min_samples=1)
    for _ in range(50):
        predictor.learn(100, 1000)
    for _ in range(50):
        predictor.learn(100, 10)
    assert predictor.predict(100).mean == pytest.approx(10.0)


def test_the_spread_is_unbiased_for_a_mixed_class() -> None:
    rng = random.Random(7)
    lengths = [rng.choice([10, 200, 800]) for _ in range(600)]
    predictor = OutputPredictor(EDGES, history=1000)
    for length in lengths:
        predictor.learn(700, length)
    forecast = predictor.predict(700)
    assert sum(forecast.shares) == pytest.approx(1.0)
    assert forecast.mean == pytest.approx(sum(lengths) / len(lengths))
    assert sum(forecast.spread(700)) == pytest.approx(700 + forecast.mean)
    share_long = sum(1 for n in lengths if n >= 512) / len(lengths)
    assert forecast.shares[2] == pytest.approx(share_long)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        OutputPredictor(EDGES, history=0)
