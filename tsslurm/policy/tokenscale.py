"""The token-velocity policy (TokenScale), made Slurm-aware.

    I_P = ceil( lambda_in / (u_P * min(V_P, V_N)) )
    I_D = ceil( sum_b lambda'_b / (u_D * V_D,b) ),  at least what the KV in use needs
    I_C = ceil( (R * lambda_in - I_P * u_P * min(V_P, V_N)) / (s_C * V_P) )
    decoders = I_D - I_C   (convertibles decode too)

Rates are the estimator's middle window (60 s): base capacity follows the rate new jobs must
meet, since a job takes about that long to queue and load. The short window (10 s) feeds only
the burst ratio R: the decayed maximum of short / middle rate seen so far, i.e. how far above
its minute's average a burst has gone. Convertible decoders (I_C) absorb that excess prefill
while new prefillers queue and load; a burst longer than a start-up raises the middle window
and so the base pools. The Slurm side is the runner's: pending and starting jobs count,
reconcile drains before it cancels, and the hold guard keeps capacity one start-up long
(hold_factor x startup_s) before letting it go. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tsslurm.policy.reconcile import placed, reference_partition
from tsslurm.policy.registry import register
from tsslurm.policy.snapshot import Decision, PartitionView, Snapshot, TokenRates

Fraction = Annotated[float, Meta(gt=0, le=1)]
BURST_FLOOR_SHARE = 0.1
"""Below a tenth of one prefiller's velocity the middle rate is too thin to measure bursts on."""


class TokenScaleParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prefill_utilisation: Fraction = 0.8
    """u_P: the share of min(V_P, V_N) a prefiller is planned at (queueing keeps TTFT)."""
    decode_utilisation: Fraction = 0.9
    """u_D: the share of V_D a decoder is planned at (V_D already keeps TPOT with headroom)."""
    kv_target: Fraction = 0.9
    """Decoders hold at least the KV in use at this occupancy."""
    convertible_prefill_share: Fraction = 0.5
    """s_C: the share of V_P a convertible gives to a burst's prefills."""
    burst_half_life_s: Annotated[float, Meta(gt=0)] = 1800.0
    """How fast the remembered burst ratio R decays back towards 1."""
    initial_burst_ratio: Annotated[float, Meta(ge=1)] = 1.0
    hold_s: Annotated[float, Meta(ge=0)] | None = None
    """Scale-down hold; None: hold_factor x the slowest partition's start-up."""
    hold_factor: Annotated[float, Meta(ge=0)] = 1.0


@register("tokenscale", TokenScaleParams, knob="hold_factor", knob_values=(0.5, 1.0, 2.0))
def decide(snapshot: Snapshot, params: TokenScaleParams, state: dict[str, Any]) -> Decision:
    short, mid = windows(snapshot.rates)[:2]
    prefill_part = reference_partition(snapshot, "prefill")
    decode_part = reference_partition(snapshot, "decode")
    v_p = prefill_velocity(prefill_part)
    burst = burst_ratio(state, snapshot.now, short, mid, v_p, params)
    i_p = math.ceil(mid.input_tokens_per_s / (params.prefill_utilisation * v_p))
    i_d = max(decode_instances(mid, decode_part, params.decode_utilisation),
              kv_instances(snapshot, decode_part, params.kv_target))
    i_c = convertible_instances(burst * mid.input_tokens_per_s, i_p, prefill_part, params)
    totals = {"prefill": i_p, "decode": max(0, i_d - i_c), "convertible": i_c}
    reasons = [
        f"lambda_in {mid.input_tokens_per_s:.0f} tok/s ({mid.window_s:.0f} s) -> {i_p} prefill",
        f"lambda' {sum(map(sum, mid.bucket_tokens_per_s)):.0f} tok/s -> {i_d} decoding",
        f"burst ratio {burst:.2f} -> {i_c} convertible",
    ]
    return Decision(placed(snapshot, totals), reasons,
                    {"burst_ratio": burst, "burst_at": snapshot.now})


def windows(rates: list[TokenRates]) -> tuple[TokenRates, TokenRates, TokenRates]:
    """(short, middle, long) of the estimator's windows, shortest first."""
    if not rates:
        raise ValueError("the snapshot has no token rates: the estimator has no window")
    return rates[0], rates[len(rates) // 2], rates[-1]


def prefill_velocity(part: PartitionView) -> float:
    v = part.velocities
    return min(v.prefill_tokens_per_s, v.kv_transfer_tokens_per_s)


def decode_instances(rates: TokenRates, part: PartitionView, utilisation: float) -> int:
    grid = part.velocities.decode_tokens_per_s
    load = sum(tokens / (utilisation * grid[i][j])
               for i, row in enumerate(rates.bucket_tokens_per_s)
               for j, tokens in enumerate(row))
    return math.ceil(load - 1e-9)


def kv_instances(snapshot: Snapshot, part: PartitionView, kv_target: float) -> int:
    used = snapshot.load.decode_kv_used_tokens
    return math.ceil(used / (kv_target * part.velocities.kv_capacity_tokens))


def burst_ratio(state: dict[str, Any], now: float, short: TokenRates, mid: TokenRates,
                v_p: float, params: TokenScaleParams) -> float:
    """max(short/middle now, the remembered ratio decayed towards 1 by its half-life)."""
    remembered = float(state.get("burst_ratio", params.initial_burst_ratio))
    elapsed = max(0.0, now - float(state.get("burst_at", now)))
    decayed = 1.0 + (remembered - 1.0) * 0.5 ** (elapsed / params.burst_half_life_s)
    floor = BURST_FLOOR_SHARE * v_p
    current = short.input_tokens_per_s / max(mid.input_tokens_per_s, floor)
    return max(1.0, decayed, current)


def convertible_instances(peak_input_rate: float, prefillers: int, part: PartitionView,
                          params: TokenScaleParams) -> int:
    """Convertibles to prefill what a burst brings beyond the prefillers' planned capacity."""
    planned = prefillers * params.prefill_utilisation * prefill_velocity(part)
    excess = peak_input_rate - planned
    per_convertible = params.convertible_prefill_share * part.velocities.prefill_tokens_per_s
    return max(0, math.ceil(excess / per_convertible - 1e-9))
