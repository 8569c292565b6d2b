"""What the profiling job measures, and in which order: prompt lengths, batch sizes, concurrency
levels and repeats, from the profile's buckets and the engine's own limits (block size, batch
limit, KV capacity), in a quick or a full variant; and the batch search of a V_D cell.

Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from tsslurm.perfmodel import bucket_representatives, decode_step_seconds
from tsslurm.profile.schema import DecodeStep, Profile
from tsslurm.profiler.results import EngineFacts, LockstepSample

MAX_REPRESENTATIVE_INPUT = 8192
MAX_REPRESENTATIVE_OUTPUT = 1024
"""The lengths `perfmodel.roofline_decode_grid` stands for the open-ended last buckets."""
STEP_MODEL_OUTPUT_TOKENS = {True: 32, False: 64}
SEARCH_CLOSE_ENOUGH = 0.1
"""A V_D batch search stops when the largest batch meeting the target is within 10 % of the
smallest one missing it."""


class Cell(msgspec.Struct, frozen=True):
    row: int
    column: int
    input_tokens: int
    output_tokens: int
    batch_cap: int
    cap_reason: str
    """"kv" or "max_num_seqs": what bounds the batch before TPOT does."""


class Plan(msgspec.Struct, frozen=True):
    prefill_tokens: int
    prefill_max_concurrency: int
    prefill_repeats: int
    single_lengths: list[int]
    single_repeats: int
    step_runs: list[tuple[int, int, int]]
    """(batch, input tokens, output tokens) of the lockstep runs the step model is fitted to."""
    cells: list[Cell]
    cell_trials: int
    pull_tokens: int
    pull_sizes: list[int]
    pull_repeats: int


def make_plan(profile: Profile, engine: EngineFacts, quick: bool) -> Plan:
    inputs, outputs = representatives(profile)
    capacity = engine.kv_capacity_tokens
    aligned = [_block_aligned(i, engine.block_size, profile.model.max_context_tokens - max(outputs))
               for i in inputs]
    cells = [_cell(row, column, i, o, engine)
             for row, i in enumerate(aligned) for column, o in enumerate(outputs)]
    prefill_tokens = min(inputs[len(inputs) // 2], profile.model.max_context_tokens - 1)
    step_lengths = [aligned[0], aligned[-1]] if quick else aligned
    step_output = STEP_MODEL_OUTPUT_TOKENS[quick]
    step_runs = [(b, i, step_output) for i in dict.fromkeys(step_lengths)
                 for b in _batches(batch_cap(i, step_output, engine)[0], 4 if quick else 2)]
    pull_tokens = max([i for i in aligned if 16 * i <= capacity // 2] or [aligned[0]])
    return Plan(
        prefill_tokens=prefill_tokens,
        prefill_max_concurrency=max(1, min(engine.max_num_seqs,
                                           int(0.8 * capacity) // prefill_tokens)),
        prefill_repeats=1 if quick else 3,
        single_lengths=sorted({min(i, profile.model.max_context_tokens - 1) for i in inputs}),
        single_repeats=2 if quick else 3,
        step_runs=step_runs, cells=cells, cell_trials=2 if quick else 4,
        pull_tokens=pull_tokens, pull_sizes=[1, 4, 16] if quick else [1, 2, 4, 8, 16],
        pull_repeats=2 if quick else 3)


def representatives(profile: Profile) -> tuple[list[int], list[int]]:
    """Each bucket's typical (input, output) length, as `perfmodel.roofline_decode_grid` takes
    them, with the inputs shortened where input + output would exceed the model's context."""
    outputs = bucket_representatives(profile.buckets.output_edges, MAX_REPRESENTATIVE_OUTPUT)
    inputs = bucket_representatives(profile.buckets.input_edges, MAX_REPRESENTATIVE_INPUT)
    room = profile.model.max_context_tokens - max(outputs)
    if room < 1:
        raise ValueError(f"model.max_context_tokens {profile.model.max_context_tokens} cannot hold "
                         f"the longest output bucket's {max(outputs)} tokens")
    return [min(i, room) for i in inputs], outputs


def _block_aligned(tokens: int, block: int, room: int) -> int:
    """Whole KV blocks plus one token: a repeated prompt then hits the prefix cache for all but
    its last token, so a batch's prompts are ready in one step and the batch decodes in lockstep."""
    blocks = max(1, round(tokens / block))
    while blocks > 1 and blocks * block + 1 > room:
        blocks -= 1
    return blocks * block + 1


def batch_cap(input_tokens: int, output_tokens: int, engine: EngineFacts) -> tuple[int, str]:
    """The largest batch of this shape the engine holds at once, and what bounds it."""
    blocks_each = math.ceil((input_tokens + output_tokens) / engine.block_size)
    by_kv = (engine.kv_capacity_tokens // engine.block_size) // blocks_each
    if by_kv < 1:
        raise ValueError(f"one request of {input_tokens} + {output_tokens} tokens does not fit "
                         f"the engine's KV cache ({engine.kv_capacity_tokens} tokens)")
    if by_kv < engine.max_num_seqs:
        return by_kv, "kv"
    return engine.max_num_seqs, "max_num_seqs"


def _cell(row: int, column: int, input_tokens: int, output_tokens: int,
          engine: EngineFacts) -> Cell:
    cap, reason = batch_cap(input_tokens, output_tokens, engine)
    return Cell(row, column, input_tokens, output_tokens, cap, reason)


def _batches(cap: int, factor: int) -> list[int]:
    sizes, size = [], 1
    while size < cap:
        sizes.append(size)
        size *= factor
    return [*sizes, cap]


def predicted_batch(cell: Cell, step: DecodeStep, target_s: float) -> int:
    """The largest batch (up to the cap) the step model keeps within target_s per step."""
    mean_context = cell.input_tokens + cell.output_tokens / 2
    batch = cell.batch_cap
    while batch > 1 and decode_step_seconds(batch, int(batch * mean_context), step) > target_s:
        batch -= 1
    return batch


def next_batch(cell: Cell, tried: Sequence[LockstepSample], target_s: float) -> int | None:
    """The next batch to try for a cell, or None when the search is done: done at the cap, when
    the largest batch meeting target_s steps within 10 % of it, or when that batch and the
    smallest one missing it are within 10 %; otherwise the step's secant (straight line through
    two measured batches) solved for target_s, kept strictly inside the bracket."""
    met = [s for s in tried if s.step_s <= target_s]
    missed = [s for s in tried if s.step_s > target_s]
    low = max(met, key=lambda s: s.batch, default=None)
    high = min(missed, key=lambda s: s.batch, default=None)
    if low is not None and (low.batch >= cell.batch_cap or _bracketed(low, high)
                            or low.step_s >= (1 - SEARCH_CLOSE_ENOUGH) * target_s):
        return None
    if low is None and (high is None or high.batch == 1):
        return None
    floor = low.batch + 1 if low is not None else 1
    ceiling = high.batch - 1 if high is not None else cell.batch_cap
    nearest = low if low is not None else high
    assert nearest is not None
    guess = _secant(low, high, tried, target_s) or int(nearest.batch * target_s / nearest.step_s)
    return min(ceiling, max(floor, guess))


def _secant(low: LockstepSample | None, high: LockstepSample | None,
            tried: Sequence[LockstepSample], target_s: float) -> int | None:
    if low is not None and high is not None:
        a, b = low, high
    else:
        distinct = sorted({s.batch: s for s in tried}.values(), key=lambda s: s.batch)
        if len(distinct) < 2:
            return None
        a, b = distinct[-2:]
    slope = (b.step_s - a.step_s) / (b.batch - a.batch)
    return int(b.batch + (target_s - b.step_s) / slope) if slope > 0 else None


def _bracketed(low: LockstepSample, high: LockstepSample | None) -> bool:
    return high is not None and high.batch - low.batch <= max(1, SEARCH_CLOSE_ENOUGH * low.batch)
