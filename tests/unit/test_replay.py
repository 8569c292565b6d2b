"""`tsslurm replay`'s pure parts: the scenario (the same trace `tsslurm simulate` prepares), the
speedup, the prompts and the send schedule, outcomes from client measurements, GPU time from job
records, the report's shape, and the emulation-vs-simulation comparison."""

from __future__ import annotations

import numpy as np
import pytest

from tsslurm.broker.store import JobRecord
from tsslurm.profile import load_profile
from tsslurm.replay.compare import Row, ranking, rows, same_ranking
from tsslurm.replay.metrics import (
    Measured,
    gpu_seconds,
    job_counts,
    outcomes,
    policy_figures,
    report,
    send_lag,
)
from tsslurm.replay.schedule import Scenario, due, max_tokens, prepare, prompt
from tsslurm.sim import synthetic
from tsslurm.sim.command import SimulateArgs, prepare_trace
from tsslurm.sim.run import simulate
from tsslurm.sim.slo import KILLED, REJECTED, SERVED, UNFINISHED
from tsslurm.sim.trace import Trace, TraceError, make_trace

pytestmark = pytest.mark.timeout(60)
PROFILE = load_profile("profiles/emulation-mock.yaml")


def small_trace() -> Trace:
    return make_trace("t", np.array([0.0, 0.5, 1.0, 4.0]), np.array([100, 100, 2000, 100]),
                      np.array([11, 11, 5, 1]))


def test_the_scenario_is_the_trace_simulate_prepares(tmp_path) -> None:
    from test_sim_cli import azure_csv

    path = azure_csv(tmp_path / "az.csv")
    from tsslurm.sim.trace_io import load_trace

    ours = prepare(load_trace(str(path)), Scenario("30:200", 1.7, 2.5, seed=3))
    theirs, _ = prepare_trace(SimulateArgs(str(path), "p", "static", tmp_path / "x.json",
                                           scale=1.7, window="30:200", seed=3, speedup=2.5),
                              PROFILE)
    assert ours.name == theirs.name
    for column in ("arrival_s", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(ours, column), getattr(theirs, column))


def test_speedup_compresses_arrivals_and_keeps_the_requests() -> None:
    trace = synthetic.bursty(2.0, 10.0, 30.0, 5.0, 60.0, seed=1)
    fast = prepare(trace, Scenario(speedup=4.0))
    np.testing.assert_allclose(fast.arrival_s, trace.arrival_s / 4.0)
    np.testing.assert_array_equal(fast.input_tokens, trace.input_tokens)
    assert fast.span_s == pytest.approx(trace.span_s / 4.0)


@pytest.mark.parametrize("scenario", [Scenario(speedup=0), Scenario(speedup=float("nan")),
                                      Scenario(scale=-1), Scenario(window="5")])
def test_bad_scenarios_are_clear_errors(scenario: Scenario) -> None:
    with pytest.raises(TraceError):
        prepare(small_trace(), scenario)


def test_prompts_are_deterministic_printable_and_of_the_recorded_length() -> None:
    first = prompt(7, 3, 500)
    assert first == prompt(7, 3, 500) and len(first) == 500
    assert all(32 <= t < 127 for t in first)
    assert first != prompt(7, 4, 500) and first != prompt(8, 3, 500)
    assert len(prompt(0, 0, 0)) == 1 and max_tokens(0) == 1 and max_tokens(37) == 37


def test_due_counts_requests_whose_time_has_come() -> None:
    arrival = np.array([0.0, 0.5, 0.5, 2.0])
    assert [due(arrival, 0, t) for t in (-0.1, 0.0, 0.49, 0.5, 1.9, 2.0, 9.0)] == \
        [0, 1, 1, 3, 3, 4, 4]
    assert due(arrival, 3, 0.0) == 3


def test_outcomes_use_the_measured_latencies_from_the_arrival() -> None:
    trace = small_trace()
    measured = [Measured(0, 0.01, 0.1, 1.1, 11), Measured(1, 0.6, None, None, 0, "too_long"),
                Measured(2, 1.0, None, None, 0, "unfinished"),
                Measured(3, 4.0, None, None, 0, "unavailable")]
    result = outcomes(trace, measured)
    assert list(result.status) == [SERVED, REJECTED, UNFINISHED, KILLED]
    assert result.first_token_s[0] == pytest.approx(0.1)
    assert result.finish_s[0] == pytest.approx(1.1)
    assert list(outcomes(trace, measured[:1]).status) == [SERVED, UNFINISHED, UNFINISHED,
                                                          UNFINISHED]


def test_slo_figures_follow_the_profile_targets() -> None:
    trace = small_trace()
    tpot = PROFILE.slo.tpot_ms / 1000.0
    ttft_small = PROFILE.slo.ttft_tiers[0].ttft_ms / 1000.0
    measured = [  # meets both; TTFT too slow; TPOT too slow; meets (one token)
        Measured(0, 0.0, 0.5 * ttft_small, 0.5 * ttft_small + 10 * 0.5 * tpot, 11),
        Measured(1, 0.5, 1.5 * ttft_small, 1.5 * ttft_small + 10 * 0.5 * tpot, 11),
        Measured(2, 1.0, 0.1, 0.1 + 4 * 2.0 * tpot, 5),
        Measured(3, 4.0, 0.05, 0.05, 1)]
    figures = policy_figures(trace, PROFILE, measured, [], 0.0, 6.0)
    assert figures["slo_attainment"] == pytest.approx(0.5)
    assert figures["ttft_attainment"] == pytest.approx(0.75)
    assert figures["tpot_attainment"] == pytest.approx(0.75)
    assert figures["requests_served"] == 4 and figures["run_s"] == 6.0


def job(job_id: str, started: float | None, ended: float | None, submitted: float = 0.0,
        partition: str = "h100", reason: str = "", ready: float | None = None) -> JobRecord:
    return JobRecord(job_id=job_id, role="prefill", partition=partition, state="ended",
                     submitted_at=submitted, started_at=started, ended_at=ended, reason=reason,
                     ready_at=ready)


def test_gpu_time_is_start_to_end_clipped_to_the_replay() -> None:
    jobs = [job("1", 90.0, 130.0), job("2", 110.0, None), job("3", None, None),
            job("4", 150.0, 220.0), job("5", 10.0, 20.0)]
    # replay [100, 200]: 30 + 90 + 0 + 50 + 0 GPU-seconds
    assert gpu_seconds(jobs, PROFILE, 100.0, 200.0) == pytest.approx(170.0)
    counts = job_counts([job("1", 90.0, 130.0, 80.0, ready=91.0),
                         job("4", 150.0, 220.0, 149.0, ready=151.0),
                         job("6", 101.0, 150.0, 100.5, reason="Slurm: TIMEOUT", ready=102.0),
                         job("7", None, 120.0, 110.0)], 100.0, 200.0)
    assert counts == {"jobs_submitted": 3, "jobs_cancelled": 1, "jobs_timed_out": 1}


def test_send_lag_is_measured_against_the_schedule() -> None:
    trace = small_trace()
    lag = send_lag(trace, [Measured(0, 0.002), Measured(1, 0.5), Measured(3, 4.01)])
    assert lag["send_lag_max_ms"] == pytest.approx(10.0)
    assert send_lag(trace, [])["send_lag_p99_ms"] is None


def test_the_report_has_the_shape_of_simulate() -> None:
    trace = synthetic.bursty(1.0, 4.0, 20.0, 5.0, 40.0, seed=2)
    simulated, _ = simulate(trace, PROFILE, ["static"], [0], processes=1)
    measured = [Measured(i, float(a), 0.1, 0.5, int(o))
                for i, (a, o) in enumerate(zip(trace.arrival_s, trace.output_tokens))]
    figures = policy_figures(trace, PROFILE, measured, [job("1", 0.0, None)], 0.0, 45.0)
    ours = report(trace, PROFILE, "static", figures, seed=0, rate_scale=1.0, speedup=1.0,
                  replay={})
    assert set(simulated) - {"rate_scale"} <= set(ours)
    assert set(simulated["policies"]["static"]) == set(ours["policies"]["static"])
    assert simulated["oracle"] == ours["oracle"]
    assert ours["policies"]["static"]["gpu_hours"] == pytest.approx(45.0 / 3600, abs=1e-6)


def test_comparison_rows_and_targets() -> None:
    emulated = {p: {"policies": {p: {"slo_attainment": s, "gpu_hours": g}}}
                for p, s, g in (("a", 0.90, 1.0), ("b", 0.50, 2.0))}
    simulated = {"policies": {"a": {"slo_attainment": 0.93, "gpu_hours": 1.05},
                              "b": {"slo_attainment": 0.40, "gpu_hours": 2.0}}}
    table = rows(emulated, simulated)
    assert table[0].slo_diff_pp == pytest.approx(3.0) and table[0].gpu_diff == pytest.approx(0.05)
    assert table[0].within and not table[1].within
    assert same_ranking(table)
    assert Row("z", 0.5, 0.5, 0.0, 0.1).gpu_diff == float("inf")


def test_ranking_groups_ties_and_detects_a_swap() -> None:
    assert ranking({"a": 50.0, "b": 49.0, "c": 10.0}, tie=2.0) == [["a", "b"], ["c"]]
    swapped = [Row("a", 0.9, 0.4, 1, 1), Row("b", 0.5, 0.6, 1, 1)]
    assert not same_ranking(swapped)
