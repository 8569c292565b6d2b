"""The engine performance model shared by the simulator and the mock engine: how long a prefill
batch, a KV transfer and a decode iteration take on one instance, from a profile's velocities.

One model, two users: the simulator computes with it, the mock engine sleeps by it, so emulation
and simulation can only differ where the real system (sockets, Slurm, scheduling) adds something.
Pure: no I/O, no clock."""

from __future__ import annotations

import math

from tsslurm.profile.schema import DecodeStep, LengthBuckets, Velocities


def prefill_seconds(tokens: int, v: Velocities) -> float:
    """One prefill batch of `tokens` input tokens (compute-bound: tokens / V_P plus overhead)."""
    return v.prefill_overhead_ms / 1000.0 + tokens / v.prefill_tokens_per_s


def kv_transfer_seconds(tokens: int, v: Velocities) -> float:
    """One request's KV pull: a fixed latency (handshake, descriptors) plus tokens / V_N."""
    return v.kv_transfer_latency_ms / 1000.0 + tokens / v.kv_transfer_tokens_per_s


def decode_step_seconds(batch: int, context_tokens: int, step: DecodeStep) -> float:
    """One decode iteration for `batch` sequences holding `context_tokens` KV tokens in all.

    Memory-bound: the weights are read once (base), each sequence adds a little (sampling,
    scheduling), and every context token's KV is read once.
    """
    if batch <= 0:
        return 0.0
    return (step.base_ms + step.per_sequence_ms * batch) / 1000.0 \
        + step.per_context_token_us * context_tokens / 1e6


def bucket_of(length: int, edges: list[int]) -> int:
    """Index of the bucket `length` falls in: edges [a, b] give buckets <a, [a, b), >=b."""
    for index, edge in enumerate(edges):
        if length < edge:
            return index
    return len(edges)


def bucket_representatives(edges: list[int], largest: int) -> list[int]:
    """A typical length per bucket: the middle of each, and 1.5x the last edge (at most `largest`)."""
    lows = [0, *edges]
    highs = [*edges, min(largest, int(edges[-1] * 1.5) * 2 - edges[-1])]
    return [max(1, (lo + hi) // 2) for lo, hi in zip(lows, highs)]


def roofline_decode_velocity(input_tokens: int, output_tokens: int, step: DecodeStep,
                             kv_capacity_tokens: int, tpot_s: float,
                             headroom: float = 0.8) -> float:
    """V_D for requests of one shape: (input + output) tokens of completed requests per second.

    The batch is the largest that fits the KV cache and keeps the step time within
    `headroom` x TPOT; each request holds a batch slot for `output_tokens` steps.
    """
    per_request = input_tokens + output_tokens
    mean_context = input_tokens + output_tokens / 2
    batch = max(1, kv_capacity_tokens // per_request)
    while batch > 1 and decode_step_seconds(batch, int(batch * mean_context), step) > headroom * tpot_s:
        batch -= 1
    step_s = decode_step_seconds(batch, int(batch * mean_context), step)
    return batch * per_request / (output_tokens * step_s)


def roofline_decode_grid(step: DecodeStep, kv_capacity_tokens: int, buckets: LengthBuckets,
                         tpot_s: float, max_input: int = 8192, max_output: int = 1024) -> list[list[float]]:
    """The 3x3 V_D grid from the decode step model, at each bucket's representative lengths."""
    inputs = bucket_representatives(buckets.input_edges, max_input)
    outputs = bucket_representatives(buckets.output_edges, max_output)
    return [
        [math.floor(roofline_decode_velocity(i, o, step, kv_capacity_tokens, tpot_s)) for o in outputs]
        for i in inputs
    ]
