"""Request traces: the Trace type and what the simulator does to one before a run - take a time
window, scale the request rate, mix several at equal request rates, and compute the rate scale at
which the trace's busiest 10 seconds need a given number of instances of a profile.

A trace is three aligned arrays sorted by arrival: seconds from the trace start, input tokens,
output tokens. Reading files is trace_io.py; synthetic traces are synthetic.py.
Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tsslurm.errors import UserError
from tsslurm.perfmodel import bucket_of
from tsslurm.profile.schema import Profile

PEAK_WINDOW_S = 10.0
JITTER_S = 1.0
"""Copies made by scale_rate arrive up to this long after their original."""


class TraceError(UserError):
    """A trace that cannot be used: unknown format, empty, a bad window or scale."""


@dataclass(frozen=True)
class Trace:
    name: str
    arrival_s: np.ndarray
    """float64 seconds from the start of the trace (the first request may arrive after 0)."""
    input_tokens: np.ndarray
    """int64 prompt tokens per request."""
    output_tokens: np.ndarray
    """int64 generated tokens per request (the simulator's truth; policies never see it early)."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise TraceError(f"trace {self.name}: arrival, input and output columns differ in length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def summary(self) -> str:
        if not len(self):
            return f"{self.name}: empty"
        rate = len(self) / max(self.span_s, 1e-9)
        return (f"{self.name}: {len(self):,} requests over {self.span_s:,.0f} s ({rate:.2f} req/s), "
                f"input mean {self.input_tokens.mean():,.0f}, output mean "
                f"{self.output_tokens.mean():,.0f} tokens")


def make_trace(name: str, arrival_s: np.ndarray, input_tokens: np.ndarray,
               output_tokens: np.ndarray) -> Trace:
    """A Trace from raw columns: sorted by arrival (stable), re-based so the first arrival is 0."""
    arrival = np.asarray(arrival_s, dtype=np.float64)
    inputs = np.asarray(input_tokens, dtype=np.int64)
    outputs = np.asarray(output_tokens, dtype=np.int64)
    if not len(arrival):
        raise TraceError(f"trace {name} has no requests")
    if not np.all(np.isfinite(arrival)):
        raise TraceError(f"trace {name}: a timestamp is not a finite number")
    if (inputs < 0).any() or (outputs < 0).any():
        raise TraceError(f"trace {name}: token counts must be >= 0")
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    return Trace(name, arrival - arrival[0], inputs[order], outputs[order])


def parse_window(text: str) -> tuple[float | None, float | None]:
    """`START:END` in seconds from the trace start; either side may be empty (`:600`, `300:`)."""
    start_text, sep, end_text = text.partition(":")
    if not sep:
        raise TraceError(f"bad window {text!r}: expected START:END in seconds, e.g. 600:1200")
    try:
        start = float(start_text) if start_text.strip() else None
        end = float(end_text) if end_text.strip() else None
    except ValueError:
        raise TraceError(f"bad window {text!r}: START and END must be numbers of seconds") from None
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise TraceError(f"bad window {text!r}: need 0 <= START < END")
    return start, end


def window(trace: Trace, start: float | None, end: float | None) -> Trace:
    """The requests arriving in [start, end) seconds from the trace start, re-based to 0."""
    lo = 0.0 if start is None else start
    hi = math.inf if end is None else end
    keep = (trace.arrival_s >= lo) & (trace.arrival_s < hi)
    if not keep.any():
        raise TraceError(f"window {lo:g}:{'' if end is None else f'{hi:g}'} of {trace.name} holds "
                         f"no request (the trace spans 0:{trace.span_s:.0f} s)")
    name = f"{trace.name}[{lo:g}:{'' if end is None else f'{hi:g}'}]"
    return Trace(name, trace.arrival_s[keep] - lo, trace.input_tokens[keep],
                 trace.output_tokens[keep])


def scale_rate(trace: Trace, factor: float, seed: int = 0) -> Trace:
    """The request rate times `factor` over the same span: each request is kept floor(factor)
    times plus once more with probability factor - floor(factor) (seeded); copies arrive within
    JITTER_S after the original. The trace's shape in time (bursts, lulls) stays where it was,
    relative to start-up latencies, and every window's load scales by `factor` on average."""
    if not math.isfinite(factor) or factor <= 0:
        raise TraceError(f"bad rate scale {factor!r}: it must be a number > 0")
    if factor == 1.0:
        return trace
    rng = np.random.default_rng(seed)
    whole = math.floor(factor)
    copies = whole + (rng.random(len(trace)) < factor - whole)
    source = np.repeat(np.arange(len(trace)), copies)
    first = np.ones(len(source), dtype=bool)
    first[1:] = source[1:] != source[:-1]
    jitter = np.where(first, 0.0, rng.uniform(0.0, JITTER_S, len(source)))
    if not len(source):
        raise TraceError(f"rate scale {factor:g} leaves no request of {trace.name}")
    scaled = make_trace(f"{trace.name}x{factor:g}", trace.arrival_s[source] + jitter,
                        trace.input_tokens[source], trace.output_tokens[source])
    offset = float(trace.arrival_s[source].min())
    return Trace(scaled.name, scaled.arrival_s + offset, scaled.input_tokens, scaled.output_tokens)


def compress_time(trace: Trace, factor: float) -> Trace:
    """The same requests arriving `factor` times as fast (the span shrinks by `factor`)."""
    if not math.isfinite(factor) or factor <= 0:
        raise TraceError(f"bad rate scale {factor!r}: it must be a number > 0")
    return Trace(f"{trace.name}/{factor:g}", trace.arrival_s / factor, trace.input_tokens,
                 trace.output_tokens)


def mix(traces: list[Trace]) -> Trace:
    """The paper's Mixed trace: each trace's time compressed or stretched to the same request
    rate (their mean rate), cut to the shortest span, and merged by arrival time."""
    if len(traces) < 2:
        raise TraceError("a mixed trace needs at least two traces")
    rates = [len(t) / max(t.span_s, 1e-9) for t in traces]
    target = sum(rates) / len(rates)
    scaled = [compress_time(t, target / r) for t, r in zip(traces, rates)]
    horizon = min(t.span_s for t in scaled)
    parts = [window(t, 0.0, horizon + 1e-9) for t in scaled]
    return make_trace("mixed(" + ",".join(t.name for t in traces) + ")",
                      np.concatenate([p.arrival_s for p in parts]),
                      np.concatenate([p.input_tokens for p in parts]),
                      np.concatenate([p.output_tokens for p in parts]))


def peak_instances(trace: Trace, profile: Profile, window_s: float = PEAK_WINDOW_S) -> float:
    """Instances (prefill + decode, of the profile's first partition with velocities) that the
    trace's busiest `window_s` seconds need at its own rate: I_P = lambda_in / min(V_P, V_N) plus
    I_D = sum_b lambda'_b / V_D,b with the true output lengths, over windows sliding by 1 s."""
    velocities = next((p.velocities for p in profile.partitions if p.velocities), None)
    if velocities is None:
        raise TraceError(f"profile {profile.deployment}: no partition has velocities to size from")
    prefill_v = min(velocities.prefill_tokens_per_s, velocities.kv_transfer_tokens_per_s)
    grid = np.asarray(velocities.decode_tokens_per_s, dtype=np.float64)
    rows = np.array([bucket_of(int(x), profile.buckets.input_edges) for x in trace.input_tokens])
    cols = np.array([bucket_of(int(y), profile.buckets.output_edges) for y in trace.output_tokens])
    per_request = (trace.input_tokens / prefill_v
                   + (trace.input_tokens + trace.output_tokens) / grid[rows, cols])
    seconds = np.floor(trace.arrival_s).astype(np.int64)
    per_second = np.bincount(seconds, weights=per_request)
    width = max(1, round(window_s))
    sums = np.convolve(per_second, np.ones(width), mode="valid") if len(per_second) >= width \
        else np.array([per_second.sum()])
    return float(sums.max()) / window_s


def scale_for_peak(trace: Trace, profile: Profile, instances: float) -> float:
    """The rate scale at which the busiest 10 seconds need `instances` instances."""
    if not math.isfinite(instances) or instances <= 0:
        raise TraceError(f"bad --peak-instances {instances!r}: it must be > 0")
    return instances / peak_instances(trace, profile)
