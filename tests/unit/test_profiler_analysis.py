"""From raw measurements to a profile's velocities: measurements synthesised from a known engine
(decode steps from a step model, prefill and pulls from known rates) give back that engine's
figures, a V_D grid a profile accepts, the step model's prediction next to each measured cell,
and the provenance the profile records."""

from __future__ import annotations

import msgspec
import pytest

from tsslurm.perfmodel import decode_step_seconds
from tsslurm.profile import load_profile
from tsslurm.profile.rules import check_profile
from tsslurm.profile.schema import DecodeStep
from tsslurm.profiler.analysis import analyse, decode_velocity
from tsslurm.profiler.plan import make_plan
from tsslurm.profiler.results import (
    DecodeCell,
    EngineFacts,
    LockstepSample,
    Measurements,
    PrefillLevel,
    PullSample,
)

pytestmark = pytest.mark.timeout(30)

ENGINE = EngineFacts(version="0.32.0", dtype="torch.float32", block_size=128, max_num_seqs=128,
                     max_num_batched_tokens=2048, kv_capacity_tokens=65536, start_s=[12.0, 9.0])
TRUTH = DecodeStep(base_ms=4.0, per_sequence_ms=0.1, per_context_token_us=0.3)


def lockstep(batch: int, input_tokens: int, output_tokens: int) -> LockstepSample:
    context = int(batch * (input_tokens + output_tokens / 2))
    return LockstepSample(batch=batch, input_tokens=input_tokens, output_tokens=output_tokens,
                          step_s=decode_step_seconds(batch, context, TRUTH),
                          context_tokens=context, steps=output_tokens - 1)


def synthetic_measurements() -> Measurements:
    profile = load_profile("local-tiny")
    plan = make_plan(profile, ENGINE, quick=True)
    samples = [lockstep(*run) for run in plan.step_runs]
    cells = [DecodeCell(row=c.row, column=c.column, limited_by=c.cap_reason,
                        sample=lockstep(c.batch_cap, c.input_tokens, c.output_tokens))
             for c in plan.cells]
    levels = [PrefillLevel(concurrency=c, input_tokens=640, seconds=c * 640 / rate)
              for c, rate in ((1, 20000), (2, 26000), (4, 33000), (8, 34000), (16, 34500))]
    singles = [PrefillLevel(concurrency=1, input_tokens=n, seconds=0.004 + n / 30000)
               for n in (128, 640, 1536)]
    pulls = [PullSample(requests=k, input_tokens=1537, seconds=0.02 + k * 1537 / 250000,
                        pulled_tokens=k * 1537) for k in (1, 4, 16)]
    return Measurements(
        partition="a100", node="a100-1", job_id="42", started_at="2026-11-22T05:47:06+00:00",
        quick=True, cpus=[0, 1], gpus="0,1", engine=ENGINE, model_load_s=16.14,
        kv_bytes_per_token=1024, prefill_levels=levels, prefill_singles=singles,
        decode_samples=samples + [c.sample for c in cells], cells=cells, pulls=pulls,
        seconds=75.0)


def test_analysis_recovers_the_engine() -> None:
    measurements = synthetic_measurements()
    analysis = analyse(measurements, load_profile("local-tiny"), headroom=0.8)
    v = analysis.velocities
    assert v.prefill_tokens_per_s == pytest.approx(34000, rel=0.02)
    assert v.kv_transfer_tokens_per_s == pytest.approx(250000, rel=1e-3)
    assert analysis.kv_latency_s == pytest.approx(0.02, rel=1e-3)
    assert v.prefill_overhead_ms == pytest.approx(4.0, abs=0.01)
    assert v.decode_step.base_ms == pytest.approx(4.0, rel=1e-3)
    assert v.decode_step.per_sequence_ms == pytest.approx(0.1, rel=1e-3)
    assert v.decode_step.per_context_token_us == pytest.approx(0.3, rel=1e-3)
    assert analysis.model_load_s == 16.1
    for cell in analysis.cells:
        assert cell.model_same_batch == pytest.approx(cell.measured, rel=1e-3)
        assert v.decode_tokens_per_s[cell.row][cell.column] == int(cell.measured)


def test_the_grid_is_the_cells_measured_velocity() -> None:
    measurements = synthetic_measurements()
    analysis = analyse(measurements, load_profile("local-tiny"), headroom=0.8)
    first = measurements.cells[0].sample
    assert analysis.velocities.decode_tokens_per_s[0][0] == \
        int(decode_velocity(first, first.step_s))
    assert decode_velocity(first, 0.02) == first.batch * (129 + 16) / (16 * 0.02)


def test_the_result_is_a_valid_profile_with_provenance() -> None:
    profile = load_profile("local-tiny")
    measurements = synthetic_measurements()
    analysis = analyse(measurements, profile, headroom=0.8)
    partition = msgspec.structs.replace(profile.partitions[0], velocities=analysis.velocities)
    assert check_profile(msgspec.structs.replace(profile, partitions=[partition])) == []
    measured = analysis.velocities.measured
    assert measured["date"] == "2026-11-22T05:47:06+00:00"
    assert measured["engine"].startswith("vllm 0.32.0 (float32")
    assert (measured["partition"], measured["node"], measured["job"]) == ("a100", "a100-1", "42")
    assert "--quick" in measured["method"] and "0.8 x TPOT" in measured["method"]
    assert measured["v_d_over_step_model"].endswith(" ".join(["1.00"] * 9))
    cells = measured["v_d_cells"].split(": ", 1)[1].split(", ")
    assert cells == [f"{c.sample.input_tokens}x{c.sample.output_tokens} -> {c.sample.batch} "
                     f"{c.limited_by}" for c in measurements.cells]
    assert measured["engine_cpu_wait"].startswith("not available")
    assert all(isinstance(value, str) for value in measured.values())


def test_the_engine_cpu_wait_of_the_measuring_time_is_recorded() -> None:
    measurements = msgspec.structs.replace(synthetic_measurements(), engine_cpu_wait=0.1234)
    measured = analyse(measurements, load_profile("local-tiny"), headroom=0.8).velocities.measured
    assert measured["engine_cpu_wait"].startswith("12.3%: the share of the measuring time")
