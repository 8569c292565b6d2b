"""The token-velocity policy (TokenScale), made Slurm-aware. With v_P = min(V_P, V_N):

    base  I_P = staff( (lambda_in + prefill backlog / (t_clear + S)) / (u_P v_P) )
          I_D = ceil( sum_b lambda'_b / (u_D V_D,b) x (1 + decode backlog / ((t_clear + S) lambda')) ),
                at least the decoders that hold the KV in use at kv_target
    burst peak = max(lambda_in(10 s), R x lambda_in(300 s)); the excess over I_P v_P goes first to
          convertibles (a prefill share s_C each) that replace decoders down to the decode
          minimum, the rest to more prefillers; decoders = I_D - convertibles.

lambda_in is the larger of the 300-s rate and the 60-s rate extrapolated one start-up ahead when
it is rising (capacity asked now serves only after queue wait + model load). lambda'_b is the
busier of the 60-s and 300-s windows. S is the partition's start-up (queue wait + model load),
staff(a) = ceil(a + prefill_safety sqrt(a)) (docs/policies.md has every term). R is the request-weighted burst_quantile of the 10-s/300-s
ratios seen in the last 30 minutes: how far above its trend a burst went, for that share of the
requests (SLO attainment counts requests, and bursts are dense in them). The convertibles take a
burst's excess prefill while new prefillers queue and load; a burst longer than a start-up lifts
the trend and so the base pools. Slurm-awareness is the runner's: pending and starting jobs
count, reconcile drains before it cancels, and the hold guard keeps capacity hold_factor x the
partition's start-up before letting it go. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tsslurm.policy.reconcile import placed, reference_partition
from tsslurm.policy.registry import register
from tsslurm.policy.snapshot import Decision, PartitionView, Snapshot, TokenRates
from tsslurm.profile.schema import Pools

Fraction = Annotated[float, Meta(gt=0, le=1)]
BURST_SAMPLE_S = 10.0
BURST_FLOOR_SHARE = 0.1
"""Below a tenth of one prefiller's velocity the middle rate is too thin to measure bursts on."""


class TokenScaleParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prefill_utilisation: Fraction = 1.0
    """u_P: the share of v_P a prefiller is planned at before the staffing margin."""
    decode_utilisation: Fraction = 0.9
    """u_D: the share of V_D a decoder is planned at (V_D already keeps TPOT with headroom)."""
    kv_target: Fraction = 0.9
    """Decoders hold at least the KV in use at this occupancy."""
    convertible_prefill_share: Fraction = 0.5
    """s_C: the share of V_P a convertible gives to a burst's prefills."""
    burst_memory_s: Annotated[float, Meta(gt=0)] = 1800.0
    """How long an observed burst ratio is remembered."""
    burst_quantile: Fraction = 0.95
    """R covers this share of the requests seen over burst_memory_s (request-weighted)."""
    burst_utilisation: Fraction = 1.0
    """The share of v_P prefillers and convertibles are planned at during a burst."""
    trend_lead: Annotated[float, Meta(ge=0)] = 1.0
    """How many start-ups ahead a rising input rate is extrapolated (0: no extrapolation)."""
    prefill_safety: Annotated[float, Meta(ge=0)] = 0.25
    """beta of the square-root staffing of the base prefill pool."""
    decode_burst: Annotated[float, Meta(ge=0, le=1)] = 0.5
    """Decoders hold decode_burst x R x the trend's decode load (a burst's KV stays a while)."""
    backlog_clear_s: Annotated[float, Meta(gt=0)] = 1.0
    """Prefill capacity is added to clear the tokens waiting for prefill within this long once
    it is ready (about a TTFT target: what is still queued after that is late)."""
    hold_s: Annotated[float, Meta(ge=0)] | None = None
    """Scale-down hold; None: hold_factor x the slowest partition's start-up."""
    hold_factor: Annotated[float, Meta(ge=0)] = 2.0
    """Hold released capacity for this many start-ups (queue wait + model load)."""
    backlog_lookahead: Annotated[float, Meta(ge=0)] = 1.0
    """Also clear the backlog the input rate's excess over the ready prefill capacity adds during
    one start-up (x this share), over a start-up + backlog_clear_s like any backlog."""


@register("tokenscale", TokenScaleParams, knob="burst_quantile",
          knob_values=(0.8, 0.9, 0.95, 0.99, 1.0))
def decide(snapshot: Snapshot, params: TokenScaleParams, state: dict[str, Any]) -> Decision:
    short, mid, long = windows(snapshot.rates)
    prefill_part = reference_partition(snapshot, "prefill")
    decode_part = reference_partition(snapshot, "decode")
    trend = burst_reference(snapshot.rates, prefill_part.startup_s)
    burst, samples = burst_ratio(state, snapshot.now, short, trend,
                                 prefill_velocity(prefill_part), params)
    base_in, i_p = base_prefillers(snapshot, mid, long, prefill_part, params)
    i_d = max(decode_with_backlog(snapshot, (mid, long), decode_part, params),
              kv_instances(snapshot, decode_part, params.kv_target),
              math.ceil(params.decode_burst * burst
                        * decode_load(trend, decode_part, params.decode_utilisation) - 1e-9))
    peak_in = max(short.input_tokens_per_s, burst * trend.input_tokens_per_s)
    prefill, convertible, decode = burst_pools(peak_in, i_p, i_d, snapshot.bounds, prefill_part,
                                               params)
    reasons = [
        f"lambda_in {base_in:.0f} tok/s with its backlog -> {i_p} prefill",
        f"lambda' {sum(map(sum, mid.bucket_tokens_per_s)):.0f} tok/s -> {i_d} decoding",
        (f"burst ratio {burst:.2f}: peak {peak_in:.0f} tok/s -> {convertible} of the decoding "
         f"convertible, {prefill - i_p} more prefill"),
    ]
    totals = {"prefill": prefill, "decode": decode, "convertible": convertible}
    return Decision(placed(snapshot, totals), reasons, {"burst_samples": samples})


def base_prefillers(snapshot: Snapshot, mid: TokenRates, long: TokenRates, part: PartitionView,
                    params: TokenScaleParams) -> tuple[float, int]:
    """(lambda_in, I_P): the trend or the rising rate one start-up ahead, plus the backlog to
    clear, staffed with the square-root rule."""
    base_in = max(long.input_tokens_per_s, rising_rate(mid, long, part.startup_s * params.trend_lead))
    backlog_in = snapshot.load.prefill_queued_tokens / clear_s(part, params)
    if params.backlog_lookahead > 0:
        deficit = max(0.0, mid.input_tokens_per_s - ready_prefill(snapshot, part, params))
        backlog_in += params.backlog_lookahead * deficit * part.startup_s / clear_s(part, params)
    offered = (base_in + backlog_in) / (params.prefill_utilisation * prefill_velocity(part))
    return base_in, staffed(offered, params.prefill_safety)


def ready_prefill(snapshot: Snapshot, part: PartitionView, params: TokenScaleParams) -> float:
    """Tokens/s the ready prefillers and convertibles prefill now."""
    def ready(role: str) -> int:
        return sum(c.ready for c in snapshot.pools.get(role, {}).values())
    return prefill_velocity(part) * (ready("prefill")
                                     + params.convertible_prefill_share * ready("convertible"))


def staffed(offered: float, safety: float) -> int:
    """Instances for an offered load (in instances' worth of work): load + safety x sqrt(load),
    the square-root staffing rule, so random arrivals queue as little at 1 instance as at 20."""
    return math.ceil(offered + safety * math.sqrt(max(0.0, offered)) - 1e-9)


def windows(rates: list[TokenRates]) -> tuple[TokenRates, TokenRates, TokenRates]:
    """(short, middle, long) of the estimator's windows, shortest first."""
    if not rates:
        raise ValueError("the snapshot has no token rates: the estimator has no window")
    return rates[0], rates[len(rates) // 2], rates[-1]


def prefill_velocity(part: PartitionView) -> float:
    v = part.velocities
    return min(v.prefill_tokens_per_s, v.kv_transfer_tokens_per_s)


def rising_rate(mid: TokenRates, long: TokenRates, lead_s: float) -> float:
    """The input rate `lead_s` ahead, extrapolated from the long window's centre through the
    middle one's, when it is rising: new capacity asked now serves only after its start-up."""
    rate = mid.input_tokens_per_s
    gap_s = (long.window_s - mid.window_s) / 2
    slope = (rate - long.input_tokens_per_s) / gap_s if gap_s > 0 else 0.0
    return rate + max(0.0, slope) * (lead_s + mid.window_s / 2)


def decode_load(rates: TokenRates, part: PartitionView, utilisation: float) -> float:
    """sum_b lambda'_b / (u_D V_D,b): decoders' worth of token velocity."""
    grid = part.velocities.decode_tokens_per_s
    return sum(tokens / (utilisation * grid[i][j])
               for i, row in enumerate(rates.bucket_tokens_per_s)
               for j, tokens in enumerate(row))


def decode_instances(rates: TokenRates, part: PartitionView, utilisation: float) -> int:
    return math.ceil(decode_load(rates, part, utilisation) - 1e-9)


def decode_with_backlog(snapshot: Snapshot, rates: tuple[TokenRates, ...], part: PartitionView,
                        params: TokenScaleParams) -> int:
    """I_D over the busier window, scaled up to also clear, within clear_s, the KV of
    prefilled requests no decoder holds yet (at the same length mix)."""
    busiest = max(rates, key=lambda r: decode_load(r, part, params.decode_utilisation))
    load = decode_load(busiest, part, params.decode_utilisation)
    tokens_per_s = sum(map(sum, busiest.bucket_tokens_per_s))
    waiting = max(0, snapshot.load.decode_kv_demand_tokens - snapshot.load.decode_kv_used_tokens)
    if tokens_per_s > 0:
        load *= 1.0 + waiting / (clear_s(part, params) * tokens_per_s)
    return math.ceil(load - 1e-9)


def kv_instances(snapshot: Snapshot, part: PartitionView, kv_target: float) -> int:
    """Decoders that hold the KV in use at kv_target occupancy."""
    used = snapshot.load.decode_kv_used_tokens
    return math.ceil(used / (kv_target * part.velocities.kv_capacity_tokens) - 1e-9)


def burst_reference(rates: list[TokenRates], startup_s: float) -> TokenRates:
    """The rate a burst is measured against: the shortest window at least one start-up long.
    Capacity follows that window in time, so only bursts shorter than a start-up need a pool
    (with a 5-s start-up, none; with minutes of queue wait, the 300-s trend)."""
    return next((r for r in rates if r.window_s >= startup_s), rates[-1])


def burst_ratio(state: dict[str, Any], now: float, short: TokenRates, trend: TokenRates,
                v_p: float, params: TokenScaleParams) -> tuple[float, list[list[float]]]:
    """R: the request-weighted burst_quantile of the short/trend input-rate ratios sampled every
    BURST_SAMPLE_S over the last burst_memory_s, and the samples to remember. Weighting by the
    requests that arrived at each ratio makes R cover that share of requests, which is what SLO
    attainment counts (bursts are rare in time but dense in requests)."""
    floor = BURST_FLOOR_SHARE * v_p
    current = short.input_tokens_per_s / max(trend.input_tokens_per_s, floor)
    samples = [s for s in state.get("burst_samples", []) if s[0] > now - params.burst_memory_s]
    if not samples or now - samples[-1][0] >= BURST_SAMPLE_S:
        samples.append([now, current, short.requests_per_s])
    return max(1.0, current, _weighted_quantile(samples, params.burst_quantile)), samples


def _weighted_quantile(samples: list[list[float]], quantile: float) -> float:
    ordered = sorted(samples, key=lambda s: s[1])
    total = sum(s[2] for s in ordered)
    if total <= 0:
        return ordered[-1][1]
    seen = 0.0
    for sample in ordered:
        seen += sample[2]
        if seen >= quantile * total - 1e-12:
            return sample[1]
    return ordered[-1][1]


def clear_s(part: PartitionView, params: TokenScaleParams) -> float:
    """How long a backlog takes to clear: backlog_clear_s once new capacity is there, which takes
    a start-up (without it, a backlog growing while jobs queue asks for ever more of them)."""
    return params.backlog_clear_s + part.startup_s


def burst_pools(peak_input_rate: float, prefillers: int, decoding: int, bounds: Pools,
                part: PartitionView, params: TokenScaleParams) -> tuple[int, int, int]:
    """(prefill, convertible, decode) that prefill a burst's peak, staffed like the base pool,
    on top of the base pools.

    A convertible prefills at s_C of a prefiller's rate but also decodes, so where it replaces a
    decoder (down to the decode pool's minimum, up to the convertible pool's maximum) it costs
    no extra GPU; beyond that a prefiller gives more prefill per GPU."""
    offered = peak_input_rate / (params.burst_utilisation * prefill_velocity(part))
    excess = max(0.0, offered + params.prefill_safety * math.sqrt(offered) - prefillers)
    share = params.convertible_prefill_share
    replaceable = min(bounds.convertible.max, max(0, decoding - bounds.decode.min))
    convertible = min(replaceable, math.ceil(excess / share - 1e-9))
    extra = math.ceil(max(0.0, excess - convertible * share) - 1e-9)
    return prefillers + extra, convertible, decoding - convertible
