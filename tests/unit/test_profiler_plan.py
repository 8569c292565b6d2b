"""What the profiling job measures: lengths aligned to KV blocks, batch caps from the engine's
limits, quick vs full sizes, and the V_D batch search against a simulated engine."""

from __future__ import annotations

import msgspec
import pytest

from tsslurm.perfmodel import decode_step_seconds
from tsslurm.profile import load_profile
from tsslurm.profile.schema import DecodeStep
from tsslurm.profiler.plan import (
    Cell,
    batch_cap,
    make_plan,
    next_batch,
    predicted_batch,
    representatives,
)
from tsslurm.profiler.results import EngineFacts, LockstepSample

pytestmark = pytest.mark.timeout(30)

TINY_ENGINE = EngineFacts(version="0.32.0", dtype="torch.float32", block_size=128,
                          max_num_seqs=128, max_num_batched_tokens=2048,
                          kv_capacity_tokens=65536, start_s=[15.0, 18.0])


def test_representatives_follow_the_profile_buckets() -> None:
    inputs, outputs = representatives(load_profile("local-tiny"))
    assert inputs == [128, 640, 1536] and outputs == [16, 80, 192]


def test_representatives_fit_the_context() -> None:
    profile = load_profile("local-tiny")
    short = msgspec.structs.replace(profile, model=msgspec.structs.replace(
        profile.model, max_context_tokens=1024))
    inputs, outputs = representatives(short)
    assert max(inputs) + max(outputs) <= 1024


@pytest.mark.parametrize("quick", [True, False])
def test_plan_for_the_tiny_model(quick: bool) -> None:
    plan = make_plan(load_profile("local-tiny"), TINY_ENGINE, quick)
    assert [(c.input_tokens, c.output_tokens) for c in plan.cells[:3]] == \
        [(129, 16), (129, 80), (129, 192)]
    assert all(c.input_tokens % 128 == 1 for c in plan.cells), "whole blocks plus one token"
    assert all(c.batch_cap * -(-(c.input_tokens + c.output_tokens) // 128) <= 512
               for c in plan.cells), "every cell's batch fits the 512 KV blocks"
    assert plan.cells[0].cap_reason == "max_num_seqs" and plan.cells[-1].cap_reason == "kv"
    assert plan.prefill_tokens == 640
    assert 16 * plan.pull_tokens <= 65536 // 2
    lengths = {run[1] for run in plan.step_runs}
    assert lengths == ({129, 1537} if quick else {129, 641, 1537})
    assert {1, 128} <= {run[0] for run in plan.step_runs}
    full = make_plan(load_profile("local-tiny"), TINY_ENGINE, quick=False)
    assert len(plan.step_runs) <= len(full.step_runs)


def test_batch_cap_names_what_bounds_it() -> None:
    assert batch_cap(129, 16, TINY_ENGINE) == (128, "max_num_seqs")
    assert batch_cap(1537, 192, TINY_ENGINE) == (512 // 14, "kv")
    with pytest.raises(ValueError, match="does not fit"):
        batch_cap(70000, 16, TINY_ENGINE)


def simulated_search(cell: Cell, step: DecodeStep, target_s: float, trials: int) -> list[int]:
    """The batches the search tries against an engine whose steps follow `step` exactly."""
    tried: list[LockstepSample] = []
    batch = 1
    while batch is not None and len(tried) < trials:
        context = int(batch * (cell.input_tokens + cell.output_tokens / 2))
        tried.append(LockstepSample(batch=batch, input_tokens=cell.input_tokens,
                                    output_tokens=cell.output_tokens,
                                    step_s=decode_step_seconds(batch, context, step),
                                    context_tokens=context, steps=10))
        batch = next_batch(cell, tried, target_s)
    return [s.batch for s in tried]


def test_the_batch_search_brackets_the_largest_batch_within_the_target() -> None:
    step = DecodeStep(base_ms=5.0, per_sequence_ms=0.5, per_context_token_us=0.0)
    cell = Cell(0, 0, 129, 64, batch_cap=400, cap_reason="kv")
    tried = simulated_search(cell, step, target_s=0.080, trials=10)
    best = max(b for b in tried if decode_step_seconds(b, 0, step) <= 0.080)
    assert best >= 0.9 * 150, f"150 is the true answer; tried {tried}"
    assert len(tried) <= 4


def test_the_batch_search_comes_down_from_a_batch_that_missed() -> None:
    step = DecodeStep(base_ms=5.0, per_sequence_ms=0.5, per_context_token_us=0.0)
    cell = Cell(0, 0, 129, 64, batch_cap=400, cap_reason="kv")
    tried: list[LockstepSample] = []
    for batch in (400, None, None, None):
        batch = batch or next_batch(cell, tried, 0.080)
        if batch is None:
            break
        tried.append(LockstepSample(batch=batch, input_tokens=129, output_tokens=64,
                                    step_s=decode_step_seconds(batch, 0, step),
                                    context_tokens=0, steps=10))
    met = [s.batch for s in tried if s.step_s <= 0.080]
    assert met and max(met) >= 135, [s.batch for s in tried]


def test_the_batch_search_stops_at_the_cap() -> None:
    step = DecodeStep(base_ms=4.0, per_sequence_ms=0.1)
    cell = Cell(0, 0, 129, 16, batch_cap=128, cap_reason="max_num_seqs")
    tried = simulated_search(cell, step, 0.080, trials=10)
    assert tried[-1] == 128 and len(tried) <= 3


def test_the_batch_search_gives_up_when_one_request_misses_the_target() -> None:
    step = DecodeStep(base_ms=120.0)
    cell = Cell(0, 0, 129, 16, batch_cap=128, cap_reason="max_num_seqs")
    assert simulated_search(cell, step, 0.080, trials=10) == [1]


def test_predicted_batch_keeps_the_model_within_the_target() -> None:
    step = DecodeStep(base_ms=5.0, per_sequence_ms=0.5)
    cell = Cell(0, 0, 129, 64, batch_cap=400, cap_reason="kv")
    assert predicted_batch(cell, step, 0.080) == 150
