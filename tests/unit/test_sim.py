"""The simulator against closed-form cases: a prefiller under deterministic and Poisson load,
capacity exactly at velocity, a decoder's TPOT against perfmodel, convertible prefill, KV capacity
limiting admission, a job's cost with its model load, time-limit replacement; and that a policy
sees only the past, and that runs are deterministic."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from tsslurm.perfmodel import decode_step_seconds, prefill_seconds
from tsslurm.policy.registry import register
from tsslurm.policy.runner import PolicyRunner
from tsslurm.policy.snapshot import ROLES, Decision, Snapshot
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile
from tsslurm.sim import synthetic
from tsslurm.sim.engine import Simulation
from tsslurm.sim.report import to_json
from tsslurm.sim.results import SimConfig
from tsslurm.sim.run import run_policy, simulate
from tsslurm.sim.slo import SERVED
from tsslurm.sim.trace import Trace, make_trace
from tsslurm.sim.workers import Decoder

pytestmark = pytest.mark.timeout(120)


@register("sim-test-fixed")
def fixed(snapshot: Snapshot, params: dict[str, Any], state: dict[str, Any]) -> Decision:
    """Hold exactly the counts in params, on the first partition."""
    part = snapshot.partitions[0].name
    return Decision({role: {part: int(params.get(role, 0))} for role in ROLES}, ["fixed"], state)


def reference(**partition_changes: Any) -> Profile:
    """The reference profile with a fixed queue wait and the given partition changes."""
    profile = load_profile("llama3-8b-a100")
    part = profile.partitions[0]
    changes: dict[str, Any] = {"queue_wait": msgspec.structs.replace(part.queue_wait,
                                                                     distribution="fixed")}
    changes.update(partition_changes)
    return msgspec.structs.replace(profile, partitions=[msgspec.structs.replace(part, **changes)])


def with_ttft_ms(profile: Profile, ms: float) -> Profile:
    """One TTFT target for every input length."""
    tiers = [msgspec.structs.replace(t, ttft_ms=ms) for t in profile.slo.ttft_tiers]
    return msgspec.structs.replace(profile, slo=msgspec.structs.replace(profile.slo,
                                                                        ttft_tiers=tiers))


def with_kv_capacity(profile: Profile, tokens: int) -> Profile:
    part = profile.partitions[0]
    velocities = msgspec.structs.replace(part.velocities, kv_capacity_tokens=tokens)
    return msgspec.structs.replace(profile, partitions=[
        msgspec.structs.replace(part, velocities=velocities)])


def run_fixed(trace: Trace, profile: Profile, config: SimConfig | None = None, **counts: int):
    runner = PolicyRunner("sim-test-fixed", {"prefill": 1, "decode": 1, **counts})
    return Simulation(trace, profile, runner, config or SimConfig()).run()


def ttft(result: Any, trace: Trace) -> np.ndarray:
    return result.outcomes.first_token_s - trace.arrival_s


def test_prefiller_below_capacity_has_no_queueing() -> None:
    profile = reference()
    v = profile.partitions[0].velocities
    trace = synthetic.constant(5.0, 60, 1000, 2)
    result = run_fixed(trace, profile)
    assert (result.outcomes.status == SERVED).all()
    expected = prefill_seconds(1000, v) + 1000 / v.kv_transfer_tokens_per_s
    assert ttft(result, trace) == pytest.approx(np.full(len(trace), expected), abs=1e-9)
    step = v.decode_step
    one_iteration = decode_step_seconds(1, 0, step) + step.per_context_token_us / 1e6 * 1000.5
    tpot = result.outcomes.finish_s - result.outcomes.first_token_s
    assert tpot == pytest.approx(np.full(len(trace), one_iteration), rel=1e-9)


def test_capacity_exactly_at_velocity_keeps_ttft_at_the_service_time() -> None:
    profile = reference()
    v = profile.partitions[0].velocities
    rate = v.prefill_tokens_per_s / 1000
    trace = synthetic.constant(rate, 60, 1000, 1)
    result = run_fixed(trace, profile)
    expected = 1000 / v.prefill_tokens_per_s + 1000 / v.kv_transfer_tokens_per_s
    assert ttft(result, trace) == pytest.approx(np.full(len(trace), expected), abs=1e-6)


def test_overload_queue_grows_like_deterministic_single_server() -> None:
    """With a TTFT target nobody misses, the deadline order is arrival order (FIFO)."""
    profile = with_ttft_ms(reference(), 60_000)
    v = profile.partitions[0].velocities
    service = 1000 / v.prefill_tokens_per_s
    gap = service / 1.25
    trace = synthetic.constant(1 / gap, 20, 1000, 1)
    result = run_fixed(trace, profile, SimConfig(max_batch_tokens=1000))
    n = np.arange(len(trace))
    expected = service + n * (service - gap) + 1000 / v.kv_transfer_tokens_per_s
    assert ttft(result, trace) == pytest.approx(expected, abs=1e-6)


def test_a_request_past_its_ttft_yields_to_one_that_can_still_meet_it() -> None:
    """A (10k tokens) holds the prefiller 1 s; B (400-ms target) arrives at 0.01 and is late by
    then, C arrives at 0.75: C goes first and meets its TTFT, B follows (FIFO: C would miss)."""
    profile = reference()
    v = profile.partitions[0].velocities
    trace = make_trace("late", np.array([0.0, 0.01, 0.75]), np.array([10_000, 1000, 1000]),
                       np.array([1, 1, 1]))
    result = run_fixed(trace, profile)
    assert (result.outcomes.status == SERVED).all()
    a_done = prefill_seconds(8192, v) + prefill_seconds(10_000 - 8192, v)
    link_free = a_done + 10_000 / v.kv_transfer_tokens_per_s  # A's KV leaves first
    c_sent = max(link_free, a_done + prefill_seconds(1000, v)) + 1000 / v.kv_transfer_tokens_per_s
    b_sent = max(c_sent, a_done + 2 * prefill_seconds(1000, v)) + 1000 / v.kv_transfer_tokens_per_s
    c_first, b_first = (t + v.kv_transfer_latency_ms / 1000 for t in (c_sent, b_sent))
    assert result.outcomes.first_token_s[2] == pytest.approx(c_first, abs=1e-6)
    assert result.outcomes.first_token_s[1] == pytest.approx(b_first, abs=1e-6)
    assert c_first - 0.75 <= 0.4 < b_first - 0.01


def test_poisson_load_matches_md1_mean_wait() -> None:
    profile = reference()
    v = profile.partitions[0].velocities
    service, rho = 1000 / v.prefill_tokens_per_s, 0.6
    base = synthetic.poisson(rho / service, 30000, seed=7)
    trace = make_trace("md1", base.arrival_s, np.full(len(base), 1000), np.ones(len(base)))
    result = run_fixed(trace, profile, SimConfig(max_batch_tokens=1000))
    wait = rho * service / (2 * (1 - rho))
    expected = service + wait + 1000 / v.kv_transfer_tokens_per_s
    assert ttft(result, trace).mean() == pytest.approx(expected, rel=0.06)


def test_decoder_iterations_match_perfmodel_for_a_fixed_batch() -> None:
    v = reference().partitions[0].velocities
    decoder = Decoder("d", "decoder", v, 2048, 500)
    batch, prompt, output = 8, 1000, 101
    for request in range(batch):
        decoder.join(request, prompt, output)
    done_at = decoder.next_event_at()
    steps = [decode_step_seconds(batch, 0, v.decode_step)
             + v.decode_step.per_context_token_us / 1e6 * (batch * prompt + batch * (k + 0.5))
             for k in range(output - 1)]
    assert done_at == pytest.approx(sum(steps), rel=1e-12)
    decoder.advance(done_at)
    assert sorted(decoder.take_finished()) == list(range(batch))
    assert decoder.batch == 0 and decoder.context == 0


def test_convertible_prefills_in_chunks_on_top_of_its_decode_step() -> None:
    v = reference().partitions[0].velocities
    decoder = Decoder("c", "convertible", v, 2048, 500)
    decoder.join(0, 1000, 1001)
    decoder.assign_prefill(1, 1250)
    iterations = 1250 / 500
    base = decode_step_seconds(1, 0, v.decode_step) + prefill_seconds(500, v)
    per_context = v.decode_step.per_context_token_us / 1e6
    expected = iterations * (base + per_context * 1000) + per_context * iterations ** 2 / 2
    assert decoder.next_event_at() == pytest.approx(expected, rel=1e-12)
    decoder.advance(expected)
    assert decoder.take_prefilled() == [1]


def test_kv_capacity_holds_a_request_until_one_finishes() -> None:
    profile = with_kv_capacity(reference(), 2500)
    v = profile.partitions[0].velocities
    trace = make_trace("kv", np.array([0.0, 0.001, 0.002]), np.full(3, 1000), np.full(3, 101))
    result = run_fixed(trace, profile)
    out = result.outcomes
    assert (out.status == SERVED).all()
    assert out.first_token_s[1] < out.finish_s[0]
    assert out.first_token_s[2] == pytest.approx(out.finish_s[0] + 1000 / v.kv_transfer_tokens_per_s,
                                                 abs=1e-9)


def test_job_cost_counts_model_load_not_queue_wait() -> None:
    profile = reference(queue_wait=msgspec.structs.replace(
        reference().partitions[0].queue_wait, mean_s=10.0), model_load_s=60.0)
    trace = synthetic.constant(1.0, 300, 500, 20)
    result = run_fixed(trace, profile, decode=2)
    new = [job for job in result.cluster.jobs.values() if not job.initial]
    assert len(new) == 1
    assert (new[0].started_at, new[0].ready_at) == (pytest.approx(10.0), pytest.approx(70.0))
    assert result.cluster.gpu_seconds(result.end_s) == pytest.approx(
        2 * result.end_s + (result.end_s - 10.0), rel=1e-12)


def test_time_limit_rotates_jobs_without_losing_requests() -> None:
    profile = reference(time_limit="00:05:00", model_load_s=10.0,
                        queue_wait=msgspec.structs.replace(reference().partitions[0].queue_wait,
                                                           mean_s=5.0))
    trace = synthetic.constant(2.0, 1200, 800, 50)
    result = run_fixed(trace, profile)
    jobs = result.cluster.jobs.values()
    assert (result.outcomes.status == SERVED).all()
    assert result.cluster.timed_out == 0
    assert result.cluster.submitted >= 2 * (1200 // 300)
    for job in jobs:
        if job.started_at is not None:
            end = job.ended_at if job.ended_at is not None else result.end_s
            assert end - job.started_at <= 300.0 + 1e-9


def test_a_policy_never_sees_the_future() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = synthetic.bursty(3.0, 30.0, 120.0, 15.0, 900.0, seed=5)
    cut = 400.0
    later = trace.arrival_s > cut
    changed = make_trace(
        "changed", np.concatenate([trace.arrival_s, trace.arrival_s[later] + 0.5]),
        np.concatenate([np.where(later, trace.input_tokens * 3, trace.input_tokens),
                        trace.input_tokens[later]]),
        np.concatenate([np.where(later, 7, trace.output_tokens), trace.output_tokens[later]]))
    decisions = []
    for variant in (trace, changed):
        result = Simulation(variant, profile, PolicyRunner("tokenscale"), SimConfig(seed=3)).run()
        decisions.append([d for d in result.decisions if d[0] <= cut])
    assert len(decisions[0]) == int(cut) + 1
    assert decisions[0] == decisions[1]


def test_recorded_snapshots_replay_to_the_same_decisions_and_actions() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = synthetic.bursty(3.0, 30.0, 120.0, 15.0, 600.0, seed=8)
    result = Simulation(trace, profile, PolicyRunner("tokenscale"),
                        SimConfig(record_snapshots=True)).run()
    replay = PolicyRunner("tokenscale")
    assert len(result.steps) == len(result.decisions) > 600
    assert any(step.actions for _, step in result.steps)
    for snapshot, step in result.steps:
        encoded = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=Snapshot)
        assert replay.step(encoded) == step


def test_same_inputs_and_seed_give_byte_identical_json() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = synthetic.bursty(2.0, 20.0, 200.0, 20.0, 600.0, seed=2)
    refs = ["tokenscale", "aibrix"]
    first, _ = simulate(trace, profile, refs, [0, 1], processes=1)
    second, _ = simulate(trace, profile, refs, [0, 1], processes=2)
    assert to_json(first) == to_json(second)
    other_seed, _ = simulate(trace, profile, refs, [5], processes=1)
    assert to_json(other_seed) != to_json(first)


def test_requests_longer_than_the_context_are_rejected_misses() -> None:
    profile = reference()
    trace = make_trace("long", np.array([0.0, 1.0]), np.array([131000, 100]), np.array([500, 10]))
    run = run_policy(trace, profile, "sim-test-fixed@prefill=1@decode=1")
    assert run.figures["requests_rejected"] == 1
    assert run.figures["slo_attainment"] == pytest.approx(0.5)
