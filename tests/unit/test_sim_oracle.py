"""The oracle bounds: the work of a request by hand, the bridge cost and the level-1 bound against
brute force on small cases, and no policy run - the baselines, tokenscale and an over-provisioned
fixed allocation - ever beats either bound for the requests it served within SLO."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsslurm.policy.registry import POLICIES, _load_builtin, register
from tsslurm.policy.snapshot import ROLES, Decision, Snapshot
from tsslurm.profile import load_profile
from tsslurm.sim import synthetic
from tsslurm.sim.oracle import Work, bounds, bridge_cost, forced_levels, level_one_bound
from tsslurm.sim.results import SimConfig
from tsslurm.sim.run import make_runner, run_policy
from tsslurm.sim.trace import make_trace

pytestmark = pytest.mark.timeout(120)


@register("sim-test-fixed")
def fixed(snapshot: Snapshot, params: dict[str, Any], state: dict[str, Any]) -> Decision:
    part = snapshot.partitions[0].name
    return Decision({role: {part: int(params.get(role, 0))} for role in ROLES}, ["fixed"], state)


def test_work_of_one_request_by_hand() -> None:
    profile = load_profile("llama3-8b-a100")
    v = profile.partitions[0].velocities
    step = v.decode_step
    trace = make_trace("one", np.array([0.0]), np.array([2000]), np.array([301]))
    work = Work(trace, profile)
    context_sum = 300 * 2000 + 300 ** 2 / 2
    decode = step.per_sequence_ms / 1000 * 300 + (
        step.base_ms / 1000 / v.kv_capacity_tokens + step.per_context_token_us / 1e6) * context_sum
    assert work.prefill_gpu_s == pytest.approx(2000 / v.prefill_tokens_per_s)
    assert work.decode_gpu_s == pytest.approx(decode)
    assert work.ends.tolist() == pytest.approx([2.0, 2.0 + 0.1 * 300])
    assert bounds(trace, profile)["oracle"]["gpu_hours"] == pytest.approx(
        (2000 / v.prefill_tokens_per_s + decode) / 3600, abs=1e-6)


def test_a_block_is_forced_the_work_its_window_cannot_do_outside_it() -> None:
    profile = load_profile("llama3-8b-a100")
    v = profile.partitions[0].velocities
    trace = make_trace("one", np.array([0.0]), np.array([2000]), np.array([1]))
    work = Work(trace, profile)
    prefill_s = 2000 / v.prefill_tokens_per_s
    slack = 2.0 - prefill_s
    assert forced_levels(work, 4.0, 0.0).tolist() == pytest.approx([prefill_s / 4.0])
    halves = forced_levels(work, 4.0, 3.0)
    assert halves.tolist() == pytest.approx([max(0.0, 1.0 - slack) / 4.0,
                                             max(0.0, 1.0 - slack) / 4.0])
    assert forced_levels(work, 1.0, 0.0).sum() == pytest.approx(0.0)


def test_the_pool_minimum_floor_counts_the_minimum_until_the_last_arrival() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = make_trace("two", np.array([0.0, 1000.0]), np.array([100, 100]), np.array([2, 2]))
    floor = bounds(trace, profile, pool_floor=True)
    bare = bounds(trace, profile)
    minimum = profile.pools.prefill.min + profile.pools.decode.min
    assert floor["oracle"]["gpu_hours"] == pytest.approx(minimum * 1000.0 / 3600, abs=1e-5)
    assert floor["oracle"]["gpu_hours_without_minimums"] == bare["oracle"]["gpu_hours"]
    assert floor["oracle_startup"]["gpu_hours"] >= floor["oracle"]["gpu_hours"]
    assert bare["oracle_startup"]["minimum_gpus"] == 0


def brute_force_level(on: list[bool], load: float, warm: bool = False) -> float:
    """Least |S| + load x stretches over block sets S containing every `on` block (with `warm`,
    a stretch that starts at block 0 is already loaded)."""
    best = float("inf")
    free = [i for i, flag in enumerate(on) if not flag]
    for extra in itertools.product([False, True], repeat=len(free)):
        chosen = list(on)
        for i, flag in zip(free, extra):
            chosen[i] = flag
        stretches = sum(1 for i, c in enumerate(chosen) if c and (i == 0 or not chosen[i - 1])
                        and not (warm and i == 0))
        best = min(best, sum(chosen) + load * stretches)
    return best


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=10), st.sampled_from([0.5, 1.5, 3.0, 7.0]),
       st.booleans())
def test_bridge_cost_is_the_least_cost_per_level(levels: list[int], load: float,
                                                 warm: bool) -> None:
    expected = sum(brute_force_level([v >= k for v in levels], load, warm)
                   for k in range(1, max(levels) + 1) if any(v >= k for v in levels))
    cost = bridge_cost(np.array(levels, dtype=float), 1.0, load, 0.0 if warm else None)
    assert cost == pytest.approx(expected)


def brute_force_hits(windows: list[tuple[int, int]], load: float,
                     warm_at: float | None = None) -> float:
    """Least cost of a point set hitting every window (points at window ends suffice); with
    `warm_at`, the set may start on at that time without a load."""
    candidates = sorted({e for _, e in windows} | {s for s, _ in windows})
    best = float("inf")
    for size in range(1, len(candidates) + 1):
        for points in itertools.combinations(candidates, size):
            if all(any(s <= p <= e for p in points) for s, e in windows):
                gaps = np.diff(points)
                first = load if warm_at is None else min(load, points[0] - warm_at)
                best = min(best, first + float(np.minimum(gaps, load).sum()))
    return best


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4)), min_size=1, max_size=7),
       st.sampled_from([1.0, 3.0, 8.0]))
def test_level_one_bound_never_exceeds_the_least_hitting_cost(
        spans: list[tuple[int, int]], load: float) -> None:
    windows = [(s, s + length) for s, length in spans]
    starts = np.array([w[0] for w in windows], dtype=float)
    ends = np.array([w[1] for w in windows], dtype=float)
    assert level_one_bound(starts, ends, load) <= brute_force_hits(windows, load) + 1e-9
    assert level_one_bound(starts, ends, load, 0.0) <= brute_force_hits(windows, load, 0.0) + 1e-9


def test_level_one_bound_on_two_far_windows() -> None:
    bound = level_one_bound(np.array([0.0, 200.0]), np.array([1.0, 201.0]), 10.0)
    assert bound == pytest.approx(18.0)
    assert bound <= brute_force_hits([(0, 1), (200, 201)], 10.0)


def policy_refs() -> list[str]:
    _load_builtin()
    builtin = sorted(name for name in POLICIES if not name.startswith("sim-test"))
    return builtin + ["sim-test-fixed@prefill=6@decode=6", "sim-test-fixed@prefill=1@decode=1"]


@pytest.mark.timeout(240)
def test_no_policy_beats_the_bounds_at_its_slo_attainment() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = synthetic.bursty(2.0, 25.0, 300.0, 20.0, 1200.0, seed=11)
    full = bounds(trace, profile, pool_floor=True)
    assert full["oracle_startup"]["gpu_hours"] > full["oracle"]["gpu_hours"] > 0
    warmup = 300.0
    for ref in policy_refs():
        run = run_policy(trace, profile, ref, seed=1, config=SimConfig(seed=1, warmup_s=warmup))
        scale = make_runner(ref, profile).startup_scale
        met = bounds(trace, profile, mask=run.meets, load_scale=scale, pool_floor=True)
        after = bounds(trace, profile, mask=run.meets, load_scale=scale, pool_floor=True,
                       from_s=warmup)
        cost, cost_after = run.figures["gpu_hours"], run.figures["gpu_hours_after_warmup"]
        for bound in ("oracle", "oracle_startup"):
            assert met[bound]["gpu_hours"] >= met[bound]["gpu_hours_without_minimums"], ref
            assert cost >= met[bound]["gpu_hours"], (ref, bound, cost, met[bound])
            assert cost_after >= after[bound]["gpu_hours"], (ref, bound, cost_after, after[bound])
            assert after[bound]["gpu_hours"] <= met[bound]["gpu_hours"], ref
