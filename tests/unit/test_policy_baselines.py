"""The baselines on hand-built snapshots, each on its published signal."""

from __future__ import annotations

import math

import pytest
from policy_factory import bounds, partition, rates, running, snapshot

from tsslurm.perfmodel import decode_step_seconds
from tsslurm.policy.baselines import (
    AibrixParams,
    DynamoParams,
    HeteroScaleParams,
    RateParams,
    StaticParams,
    aibrix,
    blitzscale,
    distserve,
    dynamo,
    heteroscale,
    request_capacities,
    static,
)
from tsslurm.policy.registry import resolve_policy
from tsslurm.policy.runner import PolicyRunner
from tsslurm.policy.snapshot import Drain, LoadView, Submit

pytestmark = pytest.mark.timeout(60)


def _totals(decision) -> dict[str, int]:
    return {role: sum(parts.values()) for role, parts in decision.targets.items()}


def test_aibrix_scales_decode_on_kv_use_against_70_percent() -> None:
    counts = {"decode": {"a100": running(ready=2)}, "prefill": {"a100": running(ready=1)}}
    load = LoadView(decode_kv_used_tokens=288_000, decode_kv_capacity_tokens=320_000,
                    prefill_in_flight=2)
    totals = _totals(aibrix(snapshot(counts=counts, load=load), AibrixParams(), {}))
    assert totals["decode"] == math.ceil(2 * 0.9 / 0.7)
    assert totals["prefill"] == 1  # 2 in flight on 1 prefiller: at its target of 2


def test_aibrix_tolerance_keeps_small_deviations() -> None:
    counts = {"decode": {"a100": running(ready=4)}, "prefill": {"a100": running(ready=2)}}
    load = LoadView(decode_kv_used_tokens=int(0.75 * 640_000), decode_kv_capacity_tokens=640_000,
                    prefill_in_flight=7)
    totals = _totals(aibrix(snapshot(counts=counts, load=load), AibrixParams(), {}))
    assert totals["decode"] == 4  # 75 % vs 70 %: within 10 %
    assert totals["prefill"] == 4  # 3.5 per prefiller vs 2: scale to ceil(7 / 2)


def test_aibrix_cooldown_holds_scale_down_for_300_s() -> None:
    runner = PolicyRunner("aibrix")
    counts = {"decode": {"a100": running(ready=4)}, "prefill": {"a100": running(ready=1)}}
    busy = LoadView(decode_kv_used_tokens=int(0.7 * 640_000), decode_kv_capacity_tokens=640_000)
    idle = LoadView(decode_kv_used_tokens=0, decode_kv_capacity_tokens=640_000)
    runner.step(snapshot(0.0, counts=counts, load=busy))
    assert runner.step(snapshot(299.0, counts=counts, load=idle)).actions == []
    drains = [a for a in runner.step(snapshot(301.0, counts=counts, load=idle)).actions
              if isinstance(a, Drain)]
    assert len(drains) == 3


def test_distserve_divides_request_rate_by_profiled_capacity() -> None:
    params = RateParams()
    per_prefiller, per_decoder = request_capacities(snapshot(), params)
    assert per_prefiller == pytest.approx(10_000 / 1024)
    assert per_decoder == pytest.approx(16_908 / (1024 + 256))
    totals = _totals(distserve(snapshot(token_rates=rates(requests_per_s=30.0)), params, {}))
    assert totals["prefill"] == math.ceil(30 / (0.8 * per_prefiller))
    assert totals["decode"] == math.ceil(30 / (0.8 * per_decoder))


def test_blitzscale_reacts_to_the_short_window_and_skips_start_up() -> None:
    snap = snapshot(token_rates=rates(requests_per_s=5.0, short=4.0))
    assert _totals(blitzscale(snap, RateParams(), {}))["prefill"] > \
        _totals(distserve(snap, RateParams(), {}))["prefill"]
    assert resolve_policy("blitzscale").startup_scale == 0.0
    assert resolve_policy("distserve").startup_scale == 1.0


def test_heteroscale_keeps_its_pd_ratio_on_decode_tokens() -> None:
    params = HeteroScaleParams(pd_ratio=0.5)
    per_decoder = 16_908 * 256 / (1024 + 256)
    load = LoadView(decode_tokens_per_s=5 * per_decoder)
    totals = _totals(heteroscale(snapshot(load=load), params, {}))
    assert totals["decode"] == math.ceil(5 / 0.7)
    assert totals["prefill"] == math.ceil(totals["decode"] * 0.5)


def test_dynamo_decides_once_per_interval_on_its_forecast() -> None:
    params = DynamoParams(interval_s=60.0)
    snap = snapshot(0.0, token_rates=rates(20_000.0, 4_000.0, requests_per_s=10.0))
    first = dynamo(snap, params, {})
    assert _totals(first)["prefill"] == math.ceil(10 * 2000 / 10_000)
    surge = snapshot(30.0, token_rates=rates(80_000.0, 16_000.0, requests_per_s=40.0))
    assert _totals(dynamo(surge, params, first.state)) == _totals(first)
    later = dynamo(snapshot(61.0, token_rates=surge.rates), params, first.state)
    assert _totals(later)["prefill"] > _totals(first)["prefill"]
    assert later.state["rate"][1] > 0  # the trend picked the rise up


def test_dynamo_ttft_correction_only_lowers_prefill() -> None:
    params = DynamoParams()
    fast = LoadView(ttft_p90_ms=50.0)  # expected 200 ms for 2000 tokens
    slow = LoadView(ttft_p90_ms=5000.0)
    shape = rates(40_000.0, 4_000.0, requests_per_s=20.0)
    assert _totals(dynamo(snapshot(token_rates=shape, load=fast), params, {}))["prefill"] == 1
    assert _totals(dynamo(snapshot(token_rates=shape, load=slow), params, {}))["prefill"] == 4


def test_dynamo_decode_meets_its_itl_target() -> None:
    snap = snapshot(token_rates=rates(10_000.0, 5_000.0, requests_per_s=10.0))
    tight = _totals(dynamo(snap, DynamoParams(itl_ms=20.0), {}))["decode"]
    loose = _totals(dynamo(snap, DynamoParams(itl_ms=100.0), {}))["decode"]
    assert tight > loose
    assert decode_step_seconds(1, 1000, snap.partitions[0].velocities.decode_step) < 0.02


def test_static_freezes_at_a_percentile_of_what_it_observed() -> None:
    params = StaticParams(percentile=50.0, observe_s=30.0)
    state: dict = {}
    loads = [8_000.0, 16_000.0, 24_000.0, 80_000.0]
    for i, load in enumerate(loads):
        decision = static(snapshot(10.0 * i, token_rates=rates(load)), params, state)
        state = decision.state
    median = 16_000.0
    assert state == {"frozen": [math.ceil(median / (0.8 * 10_000)),
                                math.ceil(median / (0.9 * 16_908))]}
    after = static(snapshot(1000.0, token_rates=rates(500_000.0)), params, state)
    assert _totals(after)["prefill"] == 2


def test_every_baseline_has_a_sweepable_knob_with_its_default() -> None:
    for name in ("aibrix", "distserve", "blitzscale", "heteroscale", "dynamo", "static", "tokenscale"):
        spec = resolve_policy(name)
        assert spec.knob is not None and spec.knob_values, name
        default = getattr(spec.params_type(), spec.knob)
        assert default is None or default in spec.knob_values, name
        for value in spec.knob_values:
            PolicyRunner.from_ref(f"{name}@{spec.knob}={value}")


def test_baselines_submit_through_the_same_reconciler() -> None:
    runner = PolicyRunner("distserve")
    step = runner.step(snapshot(token_rates=rates(requests_per_s=30.0)))
    assert all(isinstance(a, Submit) for a in step.actions)
    assert runner.step(snapshot(1.0, token_rates=rates(requests_per_s=30.0), stale=True)).actions == []


ALL = ("tokenscale", "aibrix", "distserve", "blitzscale", "heteroscale", "dynamo", "static")
BUSY = LoadView(prefill_in_flight=40, decode_kv_used_tokens=300_000,
                decode_kv_capacity_tokens=320_000, decode_tokens_per_s=20_000.0,
                prefill_queued_tokens=50_000)


def _busy(now: float = 100.0, **kwargs) -> object:
    counts = {"prefill": {"a100": running(ready=1)}, "decode": {"a100": running(ready=2)}}
    return snapshot(now, counts=kwargs.pop("counts", counts), load=BUSY,
                    token_rates=rates(60_000.0, 20_000.0, requests_per_s=40.0), **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_every_policy_scales_up_under_load_and_never_submits_twice(name: str) -> None:
    runner = PolicyRunner(name)
    first = runner.step(_busy())
    wanted = {a.role: a.count for a in first.actions if isinstance(a, Submit)}
    assert sum(wanted.values()) > 0, name
    counts = {"prefill": {"a100": running(ready=1, pending=wanted.get("prefill", 0))},
              "decode": {"a100": running(ready=2, pending=wanted.get("decode", 0))},
              "convertible": {"a100": running(pending=wanted.get("convertible", 0))}}
    again = runner.step(_busy(101.0, counts=counts))
    assert not any(isinstance(a, Submit) for a in again.actions), (name, again.actions)


@pytest.mark.parametrize("name", ALL)
def test_every_policy_holds_still_on_a_stale_view(name: str) -> None:
    assert PolicyRunner(name).step(_busy(stale=True)).actions == []


@pytest.mark.parametrize("name", ALL)
def test_every_policy_stays_within_bounds_and_budget(name: str) -> None:
    pools = bounds(prefill=(1, 3), decode=(1, 2), convertible=(0, 1), gpu_budget=5)
    step = PolicyRunner(name).step(_busy(pool_bounds=pools))
    totals = _totals(step.decision)
    assert all(getattr(pools, role).min <= n <= getattr(pools, role).max
               for role, n in totals.items())
    assert sum(totals.values()) <= 5


@pytest.mark.parametrize("name", ALL)
def test_every_policy_submits_only_where_jobs_can_start(name: str) -> None:
    parts = [partition("down", available=False, queue_wait_s=1.0), partition("up")]
    step = PolicyRunner(name).step(_busy(partitions=parts, counts={}))
    assert {a.partition for a in step.actions if isinstance(a, Submit)} == {"up"}
