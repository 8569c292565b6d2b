"""SnapshotBuilder: events in, snapshots out. Request and job life cycles, the recent latency
signals, queue-wait estimates, staleness, and causality: events after t never change a snapshot
taken at or before t."""

from __future__ import annotations

import random

import msgspec
import pytest
from policy_factory import reference_profile

from tsslurm.errors import UserError
from tsslurm.policy.builder import SnapshotBuilder
from tsslurm.policy.snapshot import Snapshot

pytestmark = pytest.mark.timeout(60)


def _builder(origin: float = 0.0) -> SnapshotBuilder:
    return SnapshotBuilder.from_profile(reference_profile(), origin=origin)


def test_a_request_moves_from_prefill_to_decode_to_done() -> None:
    b = _builder()
    b.arrival(1.0, "r1", 2000)
    b.arrival(1.5, "r2", 500)
    load = b.snapshot(2.0).load
    assert (load.prefill_in_flight, load.prefill_queued_tokens, load.decode_running) == (2, 2500, 0)
    assert b.prefill_finished(2.1, "r1")
    assert b.first_token(2.2, "r1")
    load = b.snapshot(2.3).load
    assert (load.prefill_in_flight, load.prefill_queued_tokens, load.decode_running) == (1, 500, 1)
    assert load.ttft_p90_ms == pytest.approx(1200.0)
    assert load.decode_kv_demand_tokens == 2000 + 256  # input + the prior's predicted output
    assert b.finished(12.2, "r1", 101)
    load = b.snapshot(13.0).load
    assert (load.decode_running, load.decode_kv_demand_tokens) == (0, 0)
    assert load.tpot_p90_ms == pytest.approx(100.0)
    assert b.dropped(13.0, "r2")
    assert b.snapshot(13.0).load.prefill_in_flight == 0
    assert b.requests_in_flight == 0


def test_unknown_ids_are_ignored_not_fatal() -> None:
    b = _builder()
    assert not b.prefill_finished(1.0, "nope")
    assert not b.finished(1.0, "nope", 3)
    assert not b.job_ready(1.0, "job-x")
    assert not b.worker_stats(1.0, "job-x", 5, 1.0)
    assert b.snapshot(1.0).load.decode_running == 0


def test_convertible_prefill_is_counted_until_it_finishes() -> None:
    b = _builder()
    b.job_submitted(0.0, "c1", "convertible", "a100")
    b.job_ready(100.0, "c1")
    b.arrival(101.0, "r", 3000)
    b.prefill_started(101.0, "r", "c1")
    assert b.snapshot(101.5).load.convertible_prefill_tokens == 3000
    b.prefill_finished(102.0, "r")
    assert b.snapshot(102.0).load.convertible_prefill_tokens == 0


def test_job_life_cycle_fills_the_pools_and_jobs() -> None:
    b = _builder()
    b.job_submitted(0.0, "p1", "prefill", "a100")
    b.job_submitted(0.0, "d1", "decode", "a100")
    snap = b.snapshot(10.0)
    assert snap.pools["prefill"]["a100"].pending == 1
    assert snap.count("decode") == 1
    b.job_started(30.0, "p1")
    b.job_ready(90.0, "p1", kv_capacity_tokens=1234)
    b.job_started(40.0, "d1", ends_at=500.0)
    b.job_ready(95.0, "d1")
    b.worker_stats(96.0, "d1", kv_used_tokens=8000, decode_tokens_per_s=250.0)
    snap = b.snapshot(100.0)
    assert snap.pools["prefill"]["a100"].ready == 1
    views = {j.job_id: j for j in snap.jobs}
    assert views["p1"].ends_at == pytest.approx(30.0 + 4 * 3600)
    assert views["d1"].ends_at == 500.0
    assert snap.load.decode_kv_used_tokens == 8000
    assert snap.load.decode_kv_capacity_tokens == 160_000
    assert snap.load.decode_tokens_per_s == 250.0
    b.job_draining(200.0, "d1")
    assert b.snapshot(200.0).pools["decode"]["a100"].draining == 1
    assert b.snapshot(200.0).load.decode_kv_capacity_tokens == 0
    b.job_ended(300.0, "d1")
    assert b.snapshot(300.0).count("decode") == 0


def test_queue_wait_estimate_follows_observed_waits_and_pending_jobs() -> None:
    b = _builder()
    b.job_submitted(0.0, "j1", "prefill", "a100")
    b.job_started(200.0, "j1")
    estimate = b.snapshot(200.0).partitions[0].queue_wait_s
    assert estimate == pytest.approx(0.7 * 60.0 + 0.3 * 200.0)
    b.job_submitted(300.0, "j2", "prefill", "a100")
    assert b.snapshot(1300.0).partitions[0].queue_wait_s == pytest.approx(1000.0)


def test_stale_and_unavailable_are_reported() -> None:
    b = _builder()
    b.slurm_view(1.0, ok=False)
    b.partition_available("a100", False)
    snap = b.snapshot(2.0)
    assert snap.stale and not snap.partitions[0].available
    b.slurm_view(3.0, ok=True)
    assert not b.snapshot(3.0).stale


def test_bad_job_events_get_clear_errors() -> None:
    b = _builder()
    with pytest.raises(ValueError, match="unknown partition"):
        b.job_submitted(0.0, "j", "prefill", "h100")
    with pytest.raises(ValueError, match="unknown role"):
        b.job_submitted(0.0, "j", "router", "a100")  # type: ignore[arg-type]


def test_the_predictor_learns_only_from_finished_requests() -> None:
    b = _builder()
    prior = b.arrival(0.0, "a", 100)
    assert prior.mean == pytest.approx(256.0)
    for k in range(50):
        b.arrival(1.0 + k, f"r{k}", 100)
    assert b.arrival(60.0, "b", 100) == prior
    for k in range(50):
        b.finished(61.0, f"r{k}", 20)
    assert b.arrival(62.0, "c", 100).mean == pytest.approx(20.0)


def _events(seed: int, count: int) -> list[tuple[float, str, tuple]]:
    """A random but complete stream of request and job events, in time order."""
    rng = random.Random(seed)
    events: list[tuple[float, str, tuple]] = []
    now = 0.0
    for k in range(count):
        now += rng.expovariate(4.0)
        rid = f"r{k}"
        ttft = rng.uniform(0.05, 2.0)
        events.append((now, "arrival", (rid, rng.randint(10, 9000))))
        events.append((now + ttft, "prefill_finished", (rid,)))
        events.append((now + ttft, "first_token", (rid,)))
        events.append((now + ttft + rng.uniform(0.5, 30.0), "finished", (rid, rng.randint(1, 900))))
        if k % 25 == 0:
            job = f"j{k}"
            role = rng.choice(["prefill", "decode", "convertible"])
            events.append((now, "job_submitted", (job, role, "a100")))
            events.append((now + rng.uniform(1, 100), "job_started", (job,)))
            events.append((now + rng.uniform(101, 200), "job_ready", (job,)))
            events.append((now + rng.uniform(201, 400), "worker_stats", (job, rng.randint(0, 9999), 5.0)))
    return sorted(events, key=lambda e: e[0])


def _snapshots(events: list[tuple[float, str, tuple]], ticks: list[float]) -> list[Snapshot]:
    b = _builder()
    out, pending = [], list(events)
    for tick in ticks:
        while pending and pending[0][0] <= tick:
            time, kind, args = pending.pop(0)
            getattr(b, kind)(time, *args)
        out.append(b.snapshot(tick))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_events_after_t_never_change_snapshots_up_to_t(seed: int) -> None:
    events = _events(seed, 400)
    cut = events[len(events) // 2][0]
    other = [e for e in _events(seed + 100, 400) if e[0] > cut]
    changed = sorted([e for e in events if e[0] <= cut] + other, key=lambda e: e[0])
    ticks = [float(t) for t in range(0, int(events[-1][0]) + 1, 5)]
    original, altered = _snapshots(events, ticks), _snapshots(changed, ticks)
    before = [i for i, t in enumerate(ticks) if t <= cut]
    assert before and len(before) < len(ticks)
    for i in before:
        assert msgspec.json.encode(original[i]) == msgspec.json.encode(altered[i])
    assert any(msgspec.json.encode(original[i]) != msgspec.json.encode(altered[i])
               for i in range(len(ticks)) if ticks[i] > cut)


def test_a_profile_without_velocities_gets_a_clear_error() -> None:
    profile = reference_profile()
    bare = msgspec.structs.replace(profile, partitions=[
        msgspec.structs.replace(p, velocities=None) for p in profile.partitions])
    with pytest.raises(UserError, match="no partition has velocities"):
        SnapshotBuilder.from_profile(bare)
