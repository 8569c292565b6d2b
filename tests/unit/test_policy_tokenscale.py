"""tokenscale on hand-built snapshots: its formulas, a burst, a lull, pending jobs covering the
target, a stale view, an unavailable partition, time-limit rotation, bounds and budget."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_factory import bounds, partition, rates, running, snapshot

from tsslurm.policy.runner import PolicyRunner
from tsslurm.policy.snapshot import Cancel, Drain, LoadView, Submit
from tsslurm.policy.tokenscale import TokenScaleParams, decide

pytestmark = pytest.mark.timeout(60)
V_P = 10_000.0  # profiles/llama3-8b-a100.yaml: min(V_P 10k, V_N 95k)
V_D_11 = 16_908.0  # V_D of the (input 1024-4096, output 128-512) cell


def _totals(targets: dict[str, dict[str, int]]) -> dict[str, int]:
    return {role: sum(parts.values()) for role, parts in targets.items()}


DEFAULTS = TokenScaleParams(backlog_lookahead=0.0)
"""The formulas without the look-ahead (the snapshots here have no ready prefillers)."""


def _prefillers(tokens_per_s: float, params: TokenScaleParams = DEFAULTS) -> int:
    """Square-root staffing of an input-token load: a + beta sqrt(a) prefillers."""
    offered = tokens_per_s / (params.prefill_utilisation * V_P)
    return math.ceil(offered + params.prefill_safety * math.sqrt(offered))


def _decoding(tokens_per_s: float, burst: float = 1.0, v_d: float = V_D_11,
              params: TokenScaleParams = DEFAULTS) -> int:
    load = tokens_per_s / (params.decode_utilisation * v_d)
    return max(math.ceil(load), math.ceil(params.decode_burst * burst * load))


def test_pool_sizes_follow_the_token_velocity_formulas() -> None:
    decision = decide(snapshot(token_rates=rates(20_000.0, 4_000.0)), DEFAULTS, {})
    assert _totals(decision.targets) == {"prefill": _prefillers(20_000), "decode": _decoding(24_000),
                                         "convertible": 0}


def test_a_deficit_of_ready_prefill_is_cleared_one_start_up_ahead() -> None:
    params = TokenScaleParams(backlog_lookahead=1.0)
    ready = {"prefill": {"a100": running(ready=1)}}
    short = decide(snapshot(counts=ready, token_rates=rates(30_000.0, 4_000.0)), params, {})
    covered = decide(snapshot(counts={"prefill": {"a100": running(ready=6)}},
                              token_rates=rates(30_000.0, 4_000.0)), params, {})
    startup_s = partition().startup_s
    deficit = 30_000.0 - V_P
    clear_s = params.backlog_clear_s + startup_s
    expected = _prefillers(30_000.0 + deficit * startup_s / clear_s, params)
    assert _totals(short.targets)["prefill"] == expected
    assert _totals(covered.targets)["prefill"] == _prefillers(30_000.0, params)


def test_kv_in_use_sets_a_floor_under_decoders() -> None:
    load = LoadView(decode_kv_used_tokens=400_000)
    decision = decide(snapshot(token_rates=rates(1000.0, 100.0), load=load), DEFAULTS, {})
    assert _totals(decision.targets)["decode"] == math.ceil(400_000 / (0.9 * 160_000))


def test_a_burst_fills_convertibles_then_prefillers() -> None:
    params = DEFAULTS
    burst = _totals(decide(snapshot(1000.0, token_rates=rates(20_000.0, 60_000.0, short=3.0)),
                           params, {}).targets)
    base = _prefillers(20_000)
    decoding = _decoding(80_000, burst=3.0)
    peak = 3.0 * 20_000 / V_P
    excess = peak + params.prefill_safety * math.sqrt(peak) - base  # prefillers' worth
    share = params.convertible_prefill_share
    convertible = min(decoding - 1, math.ceil(excess / share))
    extra = math.ceil(max(0.0, excess - convertible * share))
    assert convertible > 0
    assert burst == {"prefill": base + extra, "decode": decoding - convertible,
                     "convertible": convertible}


def test_the_burst_ratio_is_remembered_for_its_memory_only() -> None:
    params = DEFAULTS
    first = decide(snapshot(1000.0, token_rates=rates(20_000.0, 60_000.0, short=3.0)), params, {})
    calm = rates(20_000.0, 60_000.0)
    soon = decide(snapshot(1000.0 + params.burst_memory_s / 2, token_rates=calm), params,
                  first.state)
    late = decide(snapshot(1000.0 + 2 * params.burst_memory_s, token_rates=calm), params,
                  soon.state)
    assert _totals(soon.targets) == _totals(first.targets)
    assert _totals(late.targets)["convertible"] == 0


def test_at_the_decode_minimum_a_burst_adds_prefillers() -> None:
    v_d = 48_341.0  # the (short input, short output) cell
    snap = snapshot(token_rates=rates(12_000.0, short=5.0, cell=(0, 0)))
    totals = _totals(decide(snap, DEFAULTS, {}).targets)
    assert _decoding(12_000, burst=5.0, v_d=v_d) == 1
    assert totals == {"prefill": _prefillers(5 * 12_000), "decode": 1, "convertible": 0}


def test_convertibles_count_towards_decode() -> None:
    burst = _totals(decide(snapshot(token_rates=rates(20_000.0, 60_000.0, short=3.0)),
                           DEFAULTS, {}).targets)
    assert burst["convertible"] > 0
    assert burst["decode"] + burst["convertible"] == _decoding(80_000, burst=3.0)


def test_a_rising_rate_is_met_one_start_up_ahead() -> None:
    params = DEFAULTS
    flat = rates(40_000.0)
    rising = [flat[0], msgspec.structs.replace(flat[1], input_tokens_per_s=60_000.0), flat[2]]
    base = _totals(decide(snapshot(token_rates=flat), params, {}).targets)["prefill"]
    ahead = _totals(decide(snapshot(token_rates=rising), params, {}).targets)["prefill"]
    slope = (60_000.0 - 40_000.0) / 120.0
    assert ahead == _prefillers(60_000.0 + slope * (120.0 + 30.0)) > base


def test_backlogs_add_capacity_to_clear_them() -> None:
    params = DEFAULTS
    calm = _totals(decide(snapshot(token_rates=rates(20_000.0, 4_000.0)), params, {}).targets)
    load = LoadView(prefill_queued_tokens=3_000_000, decode_kv_demand_tokens=3_000_000,
                    decode_kv_used_tokens=100_000)
    backed = _totals(decide(snapshot(token_rates=rates(20_000.0, 4_000.0), load=load), params,
                            {}).targets)
    clear_s = params.backlog_clear_s + snapshot().partitions[0].startup_s
    assert backed["prefill"] == _prefillers(20_000 + 3_000_000 / clear_s) > calm["prefill"]
    factor = 1 + 2_900_000 / (clear_s * 24_000)
    decode_rate = 24_000 / (params.decode_utilisation * V_D_11)
    assert backed["decode"] + backed["convertible"] == math.ceil(decode_rate * factor) > calm["decode"]


def test_a_burst_pool_is_kept_only_where_start_up_is_slow() -> None:
    params = DEFAULTS
    calm = rates(20_000.0, 60_000.0)
    totals = {}
    for startup in (5.0, 120.0):
        part = partition(queue_wait_s=startup / 2, model_load_s=startup / 2)
        burst = decide(snapshot(1000.0, partitions=[part],
                                token_rates=rates(20_000.0, 60_000.0, short=3.0)), params, {})
        after = decide(snapshot(1100.0, partitions=[part], token_rates=calm), params, burst.state)
        totals[startup] = sum(_totals(after.targets).values())
    base = sum(_totals(decide(snapshot(token_rates=calm), params, {}).targets).values())
    assert totals[5.0] == base < totals[120.0]


def test_a_lull_releases_capacity_only_after_the_hold() -> None:
    runner = PolicyRunner("tokenscale")
    busy_p, busy_d = _prefillers(20_000), _decoding(24_000)
    busy = {"prefill": {"a100": running(ready=busy_p)}, "decode": {"a100": running(ready=busy_d)}}
    step = runner.step(snapshot(0.0, counts=busy, token_rates=rates(20_000.0, 4_000.0)))
    assert step.actions == []
    quiet = rates(0.0)
    held = runner.step(snapshot(60.0, counts=busy, token_rates=quiet))
    assert held.actions == [] and _totals(held.decision.targets)["prefill"] == busy_p
    hold = DEFAULTS.hold_factor * snapshot().partitions[0].startup_s
    assert runner.step(snapshot(hold - 1.0, counts=busy, token_rates=quiet)).actions == []
    released = runner.step(snapshot(hold + 1.0, counts=busy, token_rates=quiet))
    drained = [a for a in released.actions if isinstance(a, Drain)]
    assert len(drained) == (busy_p - 1) + (busy_d - 1)  # down to the minimums, drained
    assert not any(isinstance(a, Cancel) for a in released.actions)


def test_pending_jobs_covering_the_target_are_not_submitted_twice() -> None:
    runner = PolicyRunner("tokenscale", {"backlog_lookahead": 0.0})
    counts = {"prefill": {"a100": running(ready=1, pending=_prefillers(20_000) - 1)},
              "decode": {"a100": running(starting=_decoding(24_000))}}
    step = runner.step(snapshot(counts=counts, token_rates=rates(20_000.0, 4_000.0)))
    assert step.actions == []


def test_a_stale_view_holds_still() -> None:
    runner = PolicyRunner("tokenscale")
    step = runner.step(snapshot(token_rates=rates(90_000.0), stale=True))
    assert step.actions == []
    assert _totals(step.decision.targets) == {"prefill": 0, "decode": 0, "convertible": 0}


def test_new_capacity_avoids_an_unavailable_partition() -> None:
    runner = PolicyRunner("tokenscale")
    parts = [partition("down", available=False, queue_wait_s=1.0), partition("up")]
    step = runner.step(snapshot(partitions=parts, token_rates=rates(20_000.0, 4_000.0)))
    submits = [a for a in step.actions if isinstance(a, Submit)]
    assert submits and {a.partition for a in submits} == {"up"}


def test_a_job_near_its_time_limit_is_replaced() -> None:
    runner = PolicyRunner("tokenscale")
    counts = {"prefill": {"a100": running(ready=_prefillers(20_000))},
              "decode": {"a100": running(ready=_decoding(24_000))}}
    step = runner.step(snapshot(counts=counts, token_rates=rates(20_000.0, 4_000.0),
                                ends_in={"prefill-a100-ready-1": 100.0}))
    assert step.actions == [Submit("prefill", "a100", 1, step.actions[0].reason)]


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 500_000.0), st.floats(0.0, 500_000.0), st.floats(1.0, 20.0),
       st.integers(2, 40))
def test_targets_stay_within_bounds_and_budget(inputs: float, outputs: float, burst: float,
                                               budget: int) -> None:
    pools = bounds(prefill=(1, 12), decode=(1, 12), convertible=(0, 4), gpu_budget=budget)
    runner = PolicyRunner("tokenscale")
    step = runner.step(snapshot(token_rates=rates(inputs, outputs, short=burst), pool_bounds=pools))
    totals = _totals(step.decision.targets)
    for role, total in totals.items():
        assert getattr(pools, role).min <= total <= getattr(pools, role).max
    assert sum(totals.values()) <= budget
    assert sum(a.count for a in step.actions if isinstance(a, Submit)) == sum(totals.values())


@pytest.mark.parametrize("most", [0, 2])
def test_convertibles_replace_decoders_only_up_to_their_pool_maximum(most: int) -> None:
    pools = bounds(convertible=(0, most))
    snap = snapshot(token_rates=rates(20_000.0, 60_000.0, short=3.0), pool_bounds=pools)
    totals = _totals(decide(snap, DEFAULTS, {}).targets)
    assert totals["convertible"] == most
    assert totals["decode"] + totals["convertible"] == _decoding(80_000, burst=3.0)
