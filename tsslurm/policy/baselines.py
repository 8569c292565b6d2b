"""The baselines tokenscale is compared with, each on its published signal, each with its main
knob as a parameter so a sweep can give it its best cost-SLO curve (docs/policies.md):

- `aibrix`: prefill on concurrency, decode on KV-cache use (target 70 %); tolerance 10 %,
  scale-down cooldown 300 s (AIBrix's KPA/APA autoscalers).
- `distserve`: request rate over per-instance request capacities derived offline from the profile
  at a reference request shape (DistServe's simulator-derived thresholds).
- `blitzscale`: the same request-rate rule on the 10-s window, with BlitzScale's idealised live
  scaling: its spec has startup_scale=0.0, so the simulator grants it near-zero start-up.
- `heteroscale`: decode tokens/s against a target per decoder, prefill at a fixed P/D ratio.
- `dynamo`: per interval, a Holt (local linear trend) forecast of request rate, input and output
  length over profiled per-engine throughput; prefill corrected by observed/expected TTFT,
  decode by observed/expected ITL (NVIDIA Dynamo's SLA planner).
- `static`: a fixed allocation at a percentile of the token load seen in a first observation
  period, then never changed (it cannot peek at the rest of the trace).
None has convertible decoders. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tsslurm.perfmodel import bucket_of, decode_step_seconds
from tsslurm.policy.reconcile import placed, reference_partition
from tsslurm.policy.registry import register
from tsslurm.policy.snapshot import Decision, PartitionView, Snapshot
from tsslurm.policy.tokenscale import decode_instances, prefill_velocity, windows

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


class _Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of the baselines' parameters (immutable, unknown keys are errors)."""


def _decision(snapshot: Snapshot, prefill: int, decode: int, *reasons: str,
              state: dict[str, Any] | None = None) -> Decision:
    totals = {"prefill": prefill, "decode": decode, "convertible": 0}
    return Decision(placed(snapshot, totals), list(reasons), state or {})


# ---- AIBrix -----------------------------------------------------------------------------------

class AibrixParams(_Params):
    kv_target: Fraction = 0.7
    """Decode: scale so that KV-cache use per decoder is this share."""
    prefill_concurrency: Positive = 2.0
    """Prefill: requests waiting for or in prefill per prefiller."""
    tolerance: NonNegative = 0.1
    hold_s: NonNegative = 300.0
    """Scale-down cooldown."""


@register("aibrix", AibrixParams, knob="prefill_concurrency",
          knob_values=(0.5, 1.0, 2.0, 4.0, 8.0))
def aibrix(snapshot: Snapshot, params: AibrixParams, state: dict[str, Any]) -> Decision:
    load = snapshot.load
    prefill = _kpa(snapshot.count("prefill", "ready"), snapshot.count("prefill"),
                   load.prefill_in_flight, params.prefill_concurrency, params.tolerance)
    decoders = snapshot.count("decode", "ready") + snapshot.count("convertible", "ready")
    kv_use = load.decode_kv_used_tokens / load.decode_kv_capacity_tokens \
        if load.decode_kv_capacity_tokens else 0.0
    decode = _kpa(decoders, snapshot.count("decode"), decoders * kv_use, params.kv_target,
                  params.tolerance)
    return _decision(snapshot, prefill, decode,
                     f"prefill concurrency {load.prefill_in_flight} -> {prefill}",
                     f"KV use {kv_use:.0%} of {decoders} decoders -> {decode}")


def _kpa(ready: int, provisioned: int, metric_total: float, target: float,
         tolerance: float) -> int:
    """Desired replicas for a per-replica target; within tolerance, no change."""
    if ready == 0:
        return max(provisioned, math.ceil(metric_total / target))
    if abs(metric_total / (ready * target) - 1.0) <= tolerance:
        return provisioned
    return math.ceil(metric_total / target - 1e-9)


# ---- DistServe and BlitzScale: request rate ---------------------------------------------------

class RateParams(_Params):
    utilisation: Positive = 0.8
    """Share of a per-instance request capacity a pool is planned at."""
    ref_input_tokens: Annotated[int, Meta(gt=0)] = 1024
    ref_output_tokens: Annotated[int, Meta(gt=0)] = 256
    """The request shape the per-instance capacities are derived at (offline, from the profile)."""
    hold_s: NonNegative = 60.0


class BlitzParams(RateParams):
    hold_s: NonNegative = 10.0
    """Live scaling makes capacity cheap to get back, so it is let go almost at once."""


RATE_KNOB = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@register("distserve", RateParams, knob="utilisation", knob_values=RATE_KNOB)
def distserve(snapshot: Snapshot, params: RateParams, state: dict[str, Any]) -> Decision:
    return _by_request_rate(snapshot, params, windows(snapshot.rates)[1].requests_per_s)


@register("blitzscale", BlitzParams, startup_scale=0.0, knob="utilisation", knob_values=RATE_KNOB)
def blitzscale(snapshot: Snapshot, params: BlitzParams, state: dict[str, Any]) -> Decision:
    return _by_request_rate(snapshot, params, windows(snapshot.rates)[0].requests_per_s)


def _by_request_rate(snapshot: Snapshot, params: RateParams, rate: float) -> Decision:
    per_prefiller, per_decoder = request_capacities(snapshot, params)
    prefill = math.ceil(rate / (params.utilisation * per_prefiller) - 1e-9)
    decode = math.ceil(rate / (params.utilisation * per_decoder) - 1e-9)
    return _decision(snapshot, prefill, decode,
                     f"{rate:.2f} req/s over {per_prefiller:.1f} / {per_decoder:.1f} req/s "
                     f"per prefiller / decoder -> {prefill} / {decode}")


def request_capacities(snapshot: Snapshot, params: RateParams) -> tuple[float, float]:
    """Requests/s of the reference shape one prefiller and one decoder sustain."""
    prefill_part = reference_partition(snapshot, "prefill")
    decode_part = reference_partition(snapshot, "decode")
    per_prefiller = prefill_velocity(prefill_part) / params.ref_input_tokens
    v_d = _reference_vd(snapshot, decode_part, params.ref_input_tokens, params.ref_output_tokens)
    return per_prefiller, v_d / (params.ref_input_tokens + params.ref_output_tokens)


def _reference_vd(snapshot: Snapshot, part: PartitionView, input_tokens: int,
                  output_tokens: int) -> float:
    row = bucket_of(input_tokens, snapshot.buckets.input_edges)
    column = bucket_of(output_tokens, snapshot.buckets.output_edges)
    return part.velocities.decode_tokens_per_s[row][column]


# ---- HeteroScale ------------------------------------------------------------------------------

class HeteroScaleParams(_Params):
    target_fraction: Fraction = 0.7
    """Decode tokens/s per decoder planned at this share of what one sustains."""
    pd_ratio: Positive = 1.0
    """Prefillers per decoder (a fixed, profiled ratio)."""
    ref_input_tokens: Annotated[int, Meta(gt=0)] = 1024
    ref_output_tokens: Annotated[int, Meta(gt=0)] = 256
    hold_s: NonNegative = 60.0


@register("heteroscale", HeteroScaleParams, knob="target_fraction",
          knob_values=(0.1, 0.2, 0.3, 0.5, 0.7, 1.0))
def heteroscale(snapshot: Snapshot, params: HeteroScaleParams, state: dict[str, Any]) -> Decision:
    part = reference_partition(snapshot, "decode")
    v_d = _reference_vd(snapshot, part, params.ref_input_tokens, params.ref_output_tokens)
    per_decoder = v_d * params.ref_output_tokens / (params.ref_input_tokens + params.ref_output_tokens)
    observed = snapshot.load.decode_tokens_per_s
    decode = math.ceil(observed / (params.target_fraction * per_decoder) - 1e-9)
    prefill = math.ceil(decode * params.pd_ratio - 1e-9)
    return _decision(snapshot, prefill, decode,
                     f"decode {observed:.0f} tok/s over {per_decoder:.0f} per decoder -> "
                     f"{decode} decode, {prefill} prefill (P/D {params.pd_ratio})")


# ---- Dynamo -----------------------------------------------------------------------------------

class DynamoParams(_Params):
    interval_s: Positive = 60.0
    """Adjustment interval: the planner decides once per interval."""
    itl_ms: Positive | None = None
    """Inter-token latency target (None: the profile's TPOT SLO)."""
    utilisation: Positive = 1.0
    """Share of the profiled per-engine throughput planned (Dynamo plans at 1.0; lower values
    add headroom so a sweep traces its cost-SLO curve)."""
    level_smoothing: Fraction = 0.5
    trend_smoothing: Fraction = 0.3
    hold_s: NonNegative = 0.0


@register("dynamo", DynamoParams, knob="utilisation",
          knob_values=(0.2, 0.3, 0.4, 0.5, 0.7, 1.0))
def dynamo(snapshot: Snapshot, params: DynamoParams, state: dict[str, Any]) -> Decision:
    last = state.get("decided_at")
    if last is not None and snapshot.now - last < params.interval_s:
        return _decision(snapshot, state["prefill"], state["decode"], "between intervals",
                         state=state)
    rates = windows(snapshot.rates)[1]
    observed = _request_shape(rates.requests_per_s, rates.input_tokens_per_s,
                              rates.predicted_output_tokens_per_s)
    forecasts = {k: _holt(state.get(k), v, params) for k, v in observed.items()}
    rate, isl, osl = (max(0.0, f[0] + f[1]) for f in forecasts.values())
    prefill = _dynamo_prefill(snapshot, rate, isl, params.utilisation)
    decode = _dynamo_decode(snapshot, params, rate, isl, osl)
    new_state = {**forecasts, "decided_at": snapshot.now, "prefill": prefill, "decode": decode}
    return _decision(snapshot, prefill, decode,
                     f"forecast {rate:.2f} req/s, ISL {isl:.0f}, OSL {osl:.0f} -> "
                     f"{prefill} prefill, {decode} decode", state=new_state)


def _request_shape(requests: float, inputs: float, outputs: float) -> dict[str, float]:
    isl = inputs / requests if requests else 0.0
    osl = outputs / requests if requests else 0.0
    return {"rate": requests, "isl": isl, "osl": osl}


def _holt(previous: list[float] | None, value: float, params: DynamoParams) -> list[float]:
    """[level, trend] after one observation (a local linear trend filter)."""
    if previous is None:
        return [value, 0.0]
    level, trend = previous
    new_level = params.level_smoothing * value + (1 - params.level_smoothing) * (level + trend)
    new_trend = params.trend_smoothing * (new_level - level) + (1 - params.trend_smoothing) * trend
    return [new_level, new_trend]


def _dynamo_prefill(snapshot: Snapshot, rate: float, isl: float, utilisation: float) -> int:
    part = reference_partition(snapshot, "prefill")
    expected_ms = 1000.0 * (part.velocities.prefill_overhead_ms / 1000.0
                            + isl / part.velocities.prefill_tokens_per_s)
    observed_ms = snapshot.load.ttft_p90_ms
    correction = observed_ms / expected_ms if observed_ms and expected_ms > 0 else 1.0
    demand = rate * isl * min(1.0, correction)
    return math.ceil(demand / (utilisation * prefill_velocity(part)) - 1e-9)


def _dynamo_decode(snapshot: Snapshot, params: DynamoParams, rate: float, isl: float,
                   osl: float) -> int:
    part = reference_partition(snapshot, "decode")
    step = part.velocities.decode_step
    target_s = (params.itl_ms or snapshot.slo.tpot_ms) / 1000.0
    context = isl + osl / 2
    decoders = snapshot.count("decode", "ready") + snapshot.count("convertible", "ready")
    batch = snapshot.load.decode_running / decoders if decoders else 0.0
    expected_s = decode_step_seconds(max(1, round(batch)), int(max(1.0, batch) * context), step)
    observed_ms = snapshot.load.tpot_p90_ms
    correction = observed_ms / (1000.0 * expected_s) if observed_ms and batch >= 1 else 1.0
    per_decoder = _best_decode_throughput(part, target_s / correction, context, isl + osl)
    return math.ceil(rate * osl / (params.utilisation * per_decoder) - 1e-9)


def _best_decode_throughput(part: PartitionView, itl_s: float, context: float,
                            request_tokens: float) -> float:
    """Output tokens/s of the largest batch whose iteration meets `itl_s` and whose KV fits."""
    step = part.velocities.decode_step
    batch = max(1, int(part.velocities.kv_capacity_tokens // max(1.0, request_tokens)))
    while batch > 1 and decode_step_seconds(batch, int(batch * context), step) > itl_s:
        batch -= 1
    return batch / decode_step_seconds(batch, int(batch * context), step)


# ---- static -----------------------------------------------------------------------------------

class StaticParams(_Params):
    percentile: Annotated[float, Meta(ge=0, le=100)] = 95.0
    """Of the 10-s token load observed during `observe_s`."""
    observe_s: Positive = 300.0
    prefill_utilisation: Fraction = 0.8
    decode_utilisation: Fraction = 0.9
    hold_s: NonNegative = 0.0


@register("static", StaticParams, knob="percentile", knob_values=(50.0, 75.0, 90.0, 95.0, 99.0, 100.0))
def static(snapshot: Snapshot, params: StaticParams, state: dict[str, Any]) -> Decision:
    if "frozen" in state:
        prefill, decode = state["frozen"]
        return _decision(snapshot, prefill, decode, "static", state=state)
    short = windows(snapshot.rates)[0]
    prefill_part = reference_partition(snapshot, "prefill")
    decode_part = reference_partition(snapshot, "decode")
    samples_p = [*state.get("prefill_samples", []),
                 short.input_tokens_per_s / (params.prefill_utilisation * prefill_velocity(prefill_part))]
    samples_d = [*state.get("decode_samples", []),
                 float(decode_instances(short, decode_part, params.decode_utilisation))]
    prefill = math.ceil(_percentile(samples_p, params.percentile) - 1e-9)
    decode = math.ceil(_percentile(samples_d, params.percentile) - 1e-9)
    started = state.get("started_at", snapshot.now)
    if snapshot.now - started >= params.observe_s:
        return _decision(snapshot, prefill, decode, f"frozen at p{params.percentile:g}",
                         state={"frozen": [prefill, decode]})
    return _decision(snapshot, prefill, decode, f"observing load (p{params.percentile:g} so far)",
                     state={"started_at": started, "prefill_samples": samples_p,
                            "decode_samples": samples_d})


def _percentile(values: list[float], percentile: float) -> float:
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(percentile / 100 * len(ordered)) - 1))
    return ordered[rank]
