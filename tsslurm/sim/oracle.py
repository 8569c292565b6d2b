"""The oracle bounds: lower bounds on the GPU time of ANY policy that serves a set of requests
within their SLOs on the simulated system (docs/simulator.md has the definitions and proofs).

Each request j (arrival a, input x, output o) puts two jobs of work on the GPUs, each done by one
instance at a time, at most one second of work per instance-second:
- prefill: at least x / V_P GPU-seconds, inside [a, a + TTFT_j] (the first token follows it);
- decode: o - 1 iterations inside [a + x / V_P, a + TTFT_j + TPOT (o - 1)]. An iteration with
  batch B and context C <= K costs base + per_seq B + per_ctx C >= (base / K + per_ctx) C +
  per_seq B, so the request's iterations cost at least
  E_j = per_seq (o - 1) + (base / K + per_ctx) S_j, S_j = (o - 1) x + (o - 1)^2 / 2.
Of a job with work w and window D, at least w - |D \\ I| is done inside any interval I (its
mandatory part), so a block I forces F(I) = sum of mandatory parts of GPU time into itself.

`oracle`: instant, free start-up: the total work W. `oracle_startup`: every GPU-level that turns
on pays the model load L (billed), except the warm pool the run starts with; the largest of W,
the per-level bridge cost of F over blocks of 0.5 s ... 6 min (four offsets), the same split at
level 1 (an integer instance count hits every window), and the per-level hitting bound.

With `pool_floor` (the simulator's warm start: the pools' minimum is ready from time 0 and the
guards never let it drop until the last arrival or the partition's time limit) both bounds also
count m GPUs held over [0, H]: cost >= m H + the bound on the levels above m, whose block
levels are (F / b - m)+. The bounds without that floor are reported next to them.
Pure: no I/O."""

from __future__ import annotations

import numpy as np

from tsslurm.profile.schema import Profile
from tsslurm.sim.trace import Trace

BLOCKS_S = tuple(0.5 * 2 ** (k / 2) for k in range(20))
"""Block lengths tried, 0.5 s to about 6 minutes in steps of sqrt(2)."""
OFFSETS = (0.0, 0.25, 0.5, 0.75)
"""Where block boundaries fall, as a fraction of the block length."""
LEVEL_STEPS = 512
"""The level grid of the bridge cost: at least 1/32 of a GPU, at most 512 steps to the peak."""

Grid = tuple[np.ndarray, float, np.ndarray]
"""(block start times, block length, GPUs each block forces on average)."""


class Work:
    """Per-request work (GPU-seconds) and windows (seconds) of prefill and decode jobs."""

    def __init__(self, trace: Trace, profile: Profile, mask: np.ndarray | None = None):
        keep = feasible(trace, profile) if mask is None else mask & feasible(trace, profile)
        a = trace.arrival_s[keep]
        x = trace.input_tokens[keep].astype(np.float64)
        o = trace.output_tokens[keep].astype(np.float64)
        ttft = profile.slo.ttft_targets_s(trace.input_tokens[keep])
        tpot = profile.slo.tpot_ms / 1000.0
        prefill_gpu_s, prefill_wall_s, decode_gpu_s, decode_wall_s = _per_request(profile, x, o)
        decoding = o > 1
        self.requests = int(keep.sum())
        self.starts = np.concatenate([a, (a + prefill_wall_s)[decoding]])
        self.ends = np.concatenate([a + ttft, (a + ttft + tpot * (o - 1))[decoding]])
        self.gpu_s = np.concatenate([prefill_gpu_s, decode_gpu_s[decoding]])
        self.wall_s = np.concatenate([prefill_wall_s, decode_wall_s[decoding]])
        """The least time the job keeps one instance busy (its work on the fastest partition)."""
        self.instance_gpus = min(p.gpus_per_instance for p in _partitions(profile))
        self.prefill_gpu_s = float(prefill_gpu_s.sum())
        self.decode_gpu_s = float(decode_gpu_s.sum())

    @property
    def total_gpu_s(self) -> float:
        return self.prefill_gpu_s + self.decode_gpu_s


def feasible(trace: Trace, profile: Profile) -> np.ndarray:
    """Requests some policy could serve within SLO: within the context, prefill alone in time."""
    fits = trace.input_tokens + trace.output_tokens <= profile.model.max_context_tokens
    fastest = max(p.velocities.prefill_tokens_per_s for p in _partitions(profile))
    return fits & (trace.input_tokens / fastest <= profile.slo.ttft_targets_s(trace.input_tokens))


def _partitions(profile: Profile) -> list:
    parts = [p for p in profile.partitions if p.velocities is not None]
    if not parts:
        raise ValueError(f"profile {profile.deployment}: no partition has velocities")
    return parts


def _per_request(profile: Profile, x: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, ...]:
    """The least prefill GPU-s, prefill wall time, decode GPU-s and decode wall time over the
    partitions (an instance of g GPUs spends g GPU-s per second on one job)."""
    prefill_gpu, prefill_wall, decode_gpu, decode_wall = [], [], [], []
    for part in _partitions(profile):
        v, gpus = part.velocities, part.gpus_per_instance
        step = v.decode_step
        iterations = np.maximum(o - 1, 0)
        context_sum = iterations * x + iterations ** 2 / 2
        capacity = np.maximum(v.kv_capacity_tokens, x + o)
        per_context_s = step.base_ms / 1000.0 / capacity + step.per_context_token_us / 1e6
        prefill_wall.append(x / v.prefill_tokens_per_s)
        prefill_gpu.append(gpus * x / v.prefill_tokens_per_s)
        decode_wall.append(step.per_sequence_ms / 1000.0 * iterations + per_context_s * context_sum)
        decode_gpu.append(gpus * decode_wall[-1])
    return tuple(np.min(values, axis=0)
                 for values in (prefill_gpu, prefill_wall, decode_gpu, decode_wall))


def pool_floor_gpus(profile: Profile) -> tuple[int, int]:
    """(GPUs the pools' minimum always holds, GPUs of the warm pool the run starts with)."""
    pools = profile.pools
    instances = pools.prefill.min + pools.decode.min + pools.convertible.min
    parts = _partitions(profile)
    return (instances * min(p.gpus_per_instance for p in parts),
            instances * parts[0].gpus_per_instance)


def floor_horizon_s(trace: Trace, profile: Profile) -> float:
    """How long the pools' minimum is surely held: to the last arrival (the run lasts at least
    that long), and no later than the warm jobs' time limit."""
    last = float(trace.arrival_s[-1]) if len(trace) else 0.0
    return min(last, min(p.time_limit_s for p in _partitions(profile)))


def bounds(trace: Trace, profile: Profile, mask: np.ndarray | None = None,
           load_scale: float = 1.0, pool_floor: bool = False,
           from_s: float = 0.0) -> dict[str, dict[str, float]]:
    """Both bounds for the requests in `mask` (default: every feasible request); with
    `pool_floor`, on runs that hold the pools' minimum from time 0 (the simulator's warm start).
    With `from_s` > 0, the GPU time after from_s to serve the requests of `mask` arriving from
    then on, whatever runs at from_s (every level on then is loaded for free: a warm-up)."""
    if from_s > 0:
        late = trace.arrival_s >= from_s
        mask = late if mask is None else mask & late
    work = Work(trace, profile, mask)
    load_s = load_scale * min(p.model_load_s for p in _partitions(profile))
    floor_gpus, warm_gpus = pool_floor_gpus(profile)
    horizon = max(0.0, floor_horizon_s(trace, profile) - from_s)
    warm_at = from_s if from_s > 0 else None
    grids = block_grids(work, from_s) if work.requests else []
    bare_free = work.total_gpu_s
    bare_startup = max(bare_free, startup_bound(work, grids, load_s, warm_gpus, warm_at)) \
        if work.requests else 0.0
    free, startup = bare_free, bare_startup
    if pool_floor:
        free = max(free, floor_gpus * horizon + free_above(grids, floor_gpus))
        free_starts = max(0, warm_gpus - floor_gpus)
        above = startup_above(grids, load_s, floor_gpus, free_starts, warm_at)
        startup = max(startup, free, floor_gpus * horizon + above)
    return {
        "oracle": {"gpu_hours": _hours(free),
                   "gpu_hours_without_minimums": _hours(bare_free),
                   "prefill_gpu_hours": _hours(work.prefill_gpu_s),
                   "decode_gpu_hours": _hours(work.decode_gpu_s),
                   "requests": work.requests},
        "oracle_startup": {"gpu_hours": _hours(startup),
                           "gpu_hours_without_minimums": _hours(bare_startup),
                           "model_load_s": load_s, "warm_gpus": warm_gpus,
                           "minimum_gpus": floor_gpus if pool_floor else 0,
                           "minimum_until_s": round(horizon + from_s, 3) if pool_floor else 0.0,
                           "from_s": from_s, "requests": work.requests},
    }


def _hours(gpu_s: float) -> float:
    return round(gpu_s / 3600.0, 6)


def block_grids(work: Work, origin_s: float = 0.0) -> list[Grid]:
    """Every block grid tried, with the GPUs each block forces on average. With a warm-up
    (`origin_s` > 0) the blocks start at origin_s: averaging over blocks that straddle it would
    lend the free capacity before it to the work after it."""
    grids = []
    for block_s in BLOCKS_S:
        for offset in (OFFSETS if origin_s <= 0 else (0.0,)):
            shift = offset * block_s - origin_s
            levels = forced_levels(work, block_s, shift)
            grids.append((np.arange(len(levels)) * block_s - shift, block_s, levels))
    return grids


def startup_bound(work: Work, grids: list[Grid], load_s: float, warm_gpus: int,
                  warm_at: float | None = None) -> float:
    """The largest of: W, the block-averaged bridge bounds (with and without the level-1 split)
    and the per-level hitting bound; less the start-ups the warm pool saves. With `warm_at`,
    every level may be on at that time for free (no pool is subtracted then)."""
    presence = level_one_bound(work.starts, work.ends, load_s, warm_at)
    warm_gpus = 0 if warm_at is not None else warm_gpus
    best = work.total_gpu_s + (load_s if warm_gpus == 0 and warm_at is None else 0.0)
    for first, block_s, levels in grids:
        free_until = _free_until(first, warm_at)
        whole = bridge_cost(levels, block_s, load_s, free_until)
        split = presence + bridge_cost(np.maximum(levels - 1.0, 0.0), block_s, load_s, free_until)
        best = max(best, max(whole, split) - warm_gpus * load_s)
    hitting = presence + hitting_bound(grids, load_s, 2, warm_at)
    return max(best, hitting - warm_gpus * load_s)


def _free_until(first: np.ndarray, warm_at: float | None) -> float | None:
    """Where a grid's first block starts relative to the warm time (None: no warm levels)."""
    if warm_at is None or not len(first):
        return None
    return warm_at - float(first[0])


def free_above(grids: list[Grid], floor: int) -> float:
    """A lower bound on the integral of (n - floor)+: on disjoint blocks, the forced work beyond
    what `floor` GPUs do there (the best grid)."""
    return max((float(np.maximum(levels - floor, 0.0).sum()) * block_s
                for _, block_s, levels in grids), default=0.0)


def startup_above(grids: list[Grid], load_s: float, floor: int, free_starts: int,
                  warm_at: float | None = None) -> float:
    """A lower bound on the cost of the levels above `floor` (each start pays the load, but for
    `free_starts` warm ones, or any level on at `warm_at`): the best bridge bound of
    (levels - floor)+, or the hitting bound."""
    best = max((bridge_cost(np.maximum(levels - floor, 0.0), block_s, load_s,
                            _free_until(first, warm_at))
                for first, block_s, levels in grids), default=0.0)
    best = max(best, hitting_bound(grids, load_s, floor + 1, warm_at))
    return max(0.0, best - (0 if warm_at is not None else free_starts) * load_s)


def hitting_bound(grids: list[Grid], load_s: float, first_level: int,
                  warm_at: float | None = None) -> float:
    """Sum over integer levels k >= first_level of the least cost of a level set that meets every
    block whose forced work exceeds (k - 1) x its length (below it on the whole block, the
    instance count would do at most (k - 1) x its length of work there)."""
    peak = max((float(levels.max()) for _, _, levels in grids if len(levels)), default=0.0)
    total = 0.0
    for level in range(first_level, int(np.ceil(peak)) + 1):
        starts, ends = [], []
        for first, length, levels in grids:
            busy = levels > level - 1 + 1e-12
            starts.append(first[busy])
            ends.append(first[busy] + length)
        starts_k, ends_k = np.concatenate(starts), np.concatenate(ends)
        if not len(starts_k):
            break
        total += level_one_bound(starts_k, ends_k, load_s, warm_at)
    return total


def forced_levels(work: Work, block_s: float, offset_s: float) -> np.ndarray:
    """GPUs each block needs on average: of every job, the part of its work that its window
    leaves no room to do outside the block (its instance time less the window's time outside the
    block, times the GPUs of the smallest instance)."""
    slack = np.maximum(work.ends - work.starts - work.wall_s, 0.0)
    touching = slack < block_s
    starts, ends, slack = work.starts[touching], work.ends[touching], slack[touching]
    first = np.floor((starts + offset_s) / block_s).astype(np.int64)
    last = np.floor((ends + offset_s) / block_s).astype(np.int64)
    size = int(last.max()) + 1 if len(last) else 1
    forced = np.zeros(size)
    for step in range(int((last - first).max()) + 1 if len(last) else 0):
        block = first + step
        inside = block <= last
        block_start = block * block_s - offset_s
        overlap = np.minimum(ends, block_start + block_s) - np.maximum(starts, block_start)
        part = np.where(inside, np.maximum(overlap - slack, 0.0), 0.0)
        forced += np.bincount(np.minimum(block, size - 1), weights=part, minlength=size)
    return forced * work.instance_gpus / block_s


def bridge_cost(levels: np.ndarray, block_s: float, load_s: float,
                free_until: float | None = None) -> float:
    """The least cost of a capacity profile >= `levels` (blocks of `block_s`) when every
    capacity level pays `load_s` each time it turns on: per level, its blocks plus each gap
    bridged when shorter than the load, plus one load per stretch. Levels round down (a bound).
    With `free_until` (seconds from the first block's start), any level may already be on then
    for free: its first stretch costs the lesser of a load and the time from then to it."""
    peak = float(levels.max()) if len(levels) else 0.0
    if peak <= 0:
        return 0.0
    step = max(1.0 / 32, peak / LEVEL_STEPS)
    quantized = np.floor(levels / step).astype(np.int64)
    total = 0.0
    for level in range(1, int(quantized.max()) + 1):
        on = np.flatnonzero(quantized >= level)
        gaps = (np.diff(on) - 1) * block_s
        bridged = np.minimum(gaps[gaps > 0], load_s)
        first = load_s if free_until is None else \
            min(load_s, max(0.0, on[0] * block_s - free_until))
        total += len(on) * block_s + float(bridged.sum()) + first
    return total * step


def level_one_bound(starts: np.ndarray, ends: np.ndarray, load_s: float,
                    warm_at: float | None = None) -> float:
    """Least cost of the level-1 set of an integer instance count that meets every window
    [start, end]: it spans from the earliest end to the latest start, less what gaps longer
    than the load can save - each such gap is window-free, and its middle (a load shorter) lies
    in the union of the window-free intervals shrunk by load / 2 at each side. With `warm_at`
    (no later than every window), a set may already be on then: its first stretch is free."""
    if not len(starts):
        return 0.0
    return _span_cost(starts, ends, load_s) - (load_s if warm_at is not None else 0.0)


def _span_cost(starts: np.ndarray, ends: np.ndarray, load_s: float) -> float:
    earliest_end, latest_start = float(ends.min()), float(starts.max())
    if latest_start <= earliest_end:
        return load_s
    order = np.argsort(starts, kind="stable")
    sorted_starts, sorted_ends = starts[order], ends[order]
    later_end = np.minimum.accumulate(sorted_ends[::-1])[::-1]
    lo = np.maximum(sorted_starts[:-1] + load_s / 2, earliest_end)
    hi = np.minimum(later_end[1:] - load_s / 2, latest_start)
    covered_to = np.maximum.accumulate(np.concatenate([[earliest_end], hi]))[:-1]
    saved = float(np.maximum(0.0, hi - np.maximum(lo, covered_to)).sum())
    return latest_start - earliest_end - saved + load_s
