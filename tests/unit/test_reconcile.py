"""reconcile and place: submissions never duplicate what is pending or starting, reductions
cancel pending jobs before draining ready ones, time-limit rotation, unavailable partitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_factory import partition, running, snapshot

from tsslurm.policy.reconcile import place, reconcile
from tsslurm.policy.snapshot import Cancel, Decision, Drain, Submit

pytestmark = pytest.mark.timeout(60)


def _decision(**targets: dict[str, int]) -> Decision:
    return Decision(targets=targets)


def test_submits_only_the_difference() -> None:
    snap = snapshot(counts={"prefill": {"a100": running(ready=1, starting=1, pending=1)}})
    actions = reconcile(snap, _decision(prefill={"a100": 5}))
    assert actions == [Submit("prefill", "a100", 2, actions[0].reason)]


def test_pending_jobs_already_covering_the_target_submit_nothing() -> None:
    snap = snapshot(counts={"decode": {"a100": running(pending=3)}})
    assert reconcile(snap, _decision(decode={"a100": 3})) == []


def test_reductions_cancel_pending_then_starting_then_drain_ready() -> None:
    snap = snapshot(counts={"decode": {"a100": running(ready=2, starting=1, pending=2)}})
    actions = reconcile(snap, _decision(decode={"a100": 1}))
    kinds = [(type(a).__name__, a.job_id) for a in actions]
    assert kinds == [
        ("Cancel", "decode-a100-pending-1"), ("Cancel", "decode-a100-pending-0"),
        ("Cancel", "decode-a100-starting-0"), ("Drain", "decode-a100-ready-0"),
    ]


def test_the_ready_job_nearest_its_time_limit_is_drained_first() -> None:
    snap = snapshot(counts={"decode": {"a100": running(ready=3)}},
                    ends_in={"decode-a100-ready-2": 3000.0, "decode-a100-ready-0": 9000.0})
    actions = reconcile(snap, _decision(decode={"a100": 2}))
    assert actions == [Drain("decode-a100-ready-2", actions[0].reason)]


def test_draining_jobs_do_not_count() -> None:
    snap = snapshot(counts={"prefill": {"a100": running(ready=1, draining=2)}})
    actions = reconcile(snap, _decision(prefill={"a100": 2}))
    assert [(type(a), a.count) for a in actions] == [(Submit, 1)]


def test_rotation_submits_a_replacement_then_drains_the_old_job() -> None:
    near_end = {"prefill-a100-ready-0": 200.0}  # < startup 120 s + margin 120 s
    snap = snapshot(counts={"prefill": {"a100": running(ready=2)}}, ends_in=near_end)
    actions = reconcile(snap, _decision(prefill={"a100": 2}))
    assert [type(a) for a in actions] == [Submit] and actions[0].count == 1
    replaced = snapshot(counts={"prefill": {"a100": running(ready=3)}}, ends_in=near_end)
    actions = reconcile(replaced, _decision(prefill={"a100": 2}))
    assert actions == [Drain("prefill-a100-ready-0", actions[0].reason)]


def test_rotation_waits_while_the_replacement_is_starting() -> None:
    near_end = {"prefill-a100-ready-0": 200.0}
    snap = snapshot(counts={"prefill": {"a100": running(ready=1, starting=1)}}, ends_in=near_end)
    assert reconcile(snap, _decision(prefill={"a100": 1})) == []


def test_an_unavailable_partition_gets_no_submission() -> None:
    snap = snapshot(partitions=[partition(available=False)])
    assert reconcile(snap, _decision(prefill={"a100": 3})) == []


def test_a_stale_view_gives_no_action() -> None:
    snap = snapshot(counts={"prefill": {"a100": running(ready=4)}}, stale=True)
    assert reconcile(snap, _decision(prefill={"a100": 0})) == []


def test_roles_and_partitions_not_named_are_left_alone() -> None:
    snap = snapshot(counts={"prefill": {"a100": running(ready=4)}})
    assert reconcile(snap, _decision(decode={"a100": 0})) == []


def test_place_adds_on_the_better_partition_and_skips_unavailable_ones() -> None:
    fast = partition("fast", queue_wait_s=5.0)
    slow = partition("slow", queue_wait_s=3000.0)
    snap = snapshot(partitions=[slow, fast], counts={"prefill": {"slow": running(ready=2)}})
    assert place(snap, "prefill", 5) == {"slow": 2, "fast": 3}
    assert place(snap, "prefill", 1) == {"slow": 1, "fast": 0}
    down = snapshot(partitions=[slow, partition("fast", queue_wait_s=5.0, available=False)])
    assert place(down, "prefill", 3) == {"slow": 3, "fast": 0}


def test_place_moves_pending_jobs_off_an_unavailable_partition() -> None:
    gone = partition("gone", available=False)
    other = partition("other")
    snap = snapshot(partitions=[gone, other],
                    counts={"decode": {"gone": running(ready=1, pending=2)}})
    targets = place(snap, "decode", 3)
    assert targets == {"gone": 1, "other": 2}
    actions = reconcile(snap, Decision({"decode": targets}))
    assert sorted(type(a).__name__ for a in actions) == ["Cancel", "Cancel", "Submit"]


pools = st.fixed_dictionaries({s: st.integers(0, 4) for s in ("ready", "starting", "pending", "draining")})


@settings(max_examples=200, deadline=None)
@given(pools, st.integers(0, 10), st.floats(0.0, 20_000.0))
def test_reconcile_reaches_the_target_and_never_goes_below_it(
        states: dict[str, int], target: int, ends_in: float) -> None:
    snap = snapshot(counts={"decode": {"a100": states}}, ends_in={"decode-a100-ready-0": ends_in})
    actions = reconcile(snap, _decision(decode={"a100": target}))
    removed = {a.job_id for a in actions if isinstance(a, (Cancel, Drain))}
    added = sum(a.count for a in actions if isinstance(a, Submit))
    kept = [j for j in snap.jobs if j.state != "draining" and j.job_id not in removed]
    ready_kept = sum(1 for j in kept if j.state == "ready")
    horizon = 240.0
    expiring = sum(1 for j in kept if j.ends_at is not None and j.ends_at - snap.now < horizon)
    assert len(kept) - expiring + added == target
    assert ready_kept >= min(target, sum(1 for j in snap.jobs if j.state == "ready"))
    assert len({a.job_id for a in actions if not isinstance(a, Submit)}) == len(removed)
    if any(isinstance(a, Submit) for a in actions):
        assert not any(isinstance(a, Cancel) and "pending" in a.job_id for a in actions)
