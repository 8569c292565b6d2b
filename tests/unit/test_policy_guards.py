"""Guards around any policy: stale hold, scale-down hold, pool bounds, GPU budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_factory import bounds, partition, running, snapshot

from tsslurm.policy.guards import hold_down, hold_if_stale, within_bounds, within_budget
from tsslurm.policy.snapshot import Decision

pytestmark = pytest.mark.timeout(60)


def test_a_stale_view_holds_what_is_provisioned() -> None:
    snap = snapshot(counts={"prefill": {"a100": running(ready=2, pending=1)}}, stale=True)
    held = hold_if_stale(snap, Decision({"prefill": {"a100": 9}}))
    assert held.targets["prefill"] == {"a100": 3}
    assert "stale" in held.reasons[-1]


def test_hold_keeps_the_largest_recent_target_then_lets_go() -> None:
    memory: dict = {}
    asked = [(0.0, 5), (10.0, 2), (60.0, 3), (100.0, 1), (125.0, 1), (200.0, 1)]
    got = []
    for now, total in asked:
        decision, memory = hold_down(snapshot(now), Decision({"decode": {"a100": total}}),
                                     {"decode": 120.0}, memory)
        got.append(decision.targets["decode"]["a100"])
    assert got == [5, 5, 5, 5, 3, 1]


def test_scale_up_is_never_held_back() -> None:
    decision, _ = hold_down(snapshot(0.0), Decision({"prefill": {"a100": 1}}), {"prefill": 600.0}, {})
    decision, _ = hold_down(snapshot(1.0), Decision({"prefill": {"a100": 7}}), {"prefill": 600.0},
                            {"prefill": [[0.0, 1.0]]})
    assert decision.targets["prefill"]["a100"] == 7


def test_bounds_clamp_each_role() -> None:
    snap = snapshot(pool_bounds=bounds(prefill=(2, 4), decode=(1, 3), convertible=(0, 1)))
    decision = within_bounds(snap, Decision({"prefill": {"a100": 0}, "decode": {"a100": 9},
                                             "convertible": {"a100": 1}}))
    assert decision.targets == {"prefill": {"a100": 2}, "decode": {"a100": 3},
                                "convertible": {"a100": 1}}


def test_budget_cuts_convertibles_first_and_counts_draining_gpus() -> None:
    snap = snapshot(counts={"decode": {"a100": running(draining=1)}},
                    pool_bounds=bounds(gpu_budget=6))
    decision = within_budget(snap, Decision({"prefill": {"a100": 2}, "decode": {"a100": 3},
                                             "convertible": {"a100": 2}}))
    assert decision.targets == {"prefill": {"a100": 2}, "decode": {"a100": 3},
                                "convertible": {"a100": 0}}


def test_budget_counts_gpus_per_instance() -> None:
    wide = partition(gpus_per_instance=4)
    snap = snapshot(partitions=[wide], pool_bounds=bounds(gpu_budget=12))
    decision = within_budget(snap, Decision({"prefill": {"a100": 2}, "decode": {"a100": 3}}))
    total = sum(n for parts in decision.targets.values() for n in parts.values())
    assert total == 3


role_targets = st.fixed_dictionaries({r: st.integers(0, 40) for r in ("prefill", "decode", "convertible")})


@settings(max_examples=200, deadline=None)
@given(role_targets, st.integers(3, 60))
def test_bounds_then_budget_stay_within_both(totals: dict[str, int], budget: int) -> None:
    pools = bounds(prefill=(1, 16), decode=(1, 16), convertible=(0, 8), gpu_budget=budget)
    snap = snapshot(pool_bounds=pools)
    decision = Decision({role: {"a100": n} for role, n in totals.items()})
    guarded = within_budget(snap, within_bounds(snap, decision))
    got = {role: parts["a100"] for role, parts in guarded.targets.items()}
    for role, total in got.items():
        limits = getattr(pools, role)
        assert limits.min <= total <= limits.max
    assert sum(got.values()) <= budget
