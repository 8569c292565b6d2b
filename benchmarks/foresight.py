"""What perfect foresight buys: a clairvoyant capacity schedule, served by the simulator.

A what-if, not a policy: `decide` reads a schedule computed from the whole trace, the future
included, which no real policy may see. It puts a number on the other side of the
`oracle_startup` bound: the bound is below every schedule; this is one schedule that knows the
future, pays the model load on every start and is served by the real P/D simulation. Where it
gets close to the bound and tokenscale does not, the gap is foresight.

The schedule, per second u, from the requests arriving at u and after:
- prefillers: the most prefill work arriving in any window [u, u + w), w = 1 ... 64 s, per second
  of w + the shortest TTFT, x a prefill margin;
- decoders: the KV reserved (input + output) by the requests decoding at u, at the profile's KV
  capacity, x a decode margin (decode lasts a TTFT + output x a 25-ms iteration, the reference decoder's
  at half its KV);
- held at each second: the most needed over the next model load + 2 s, which asks for each
  instance one load ahead (ready 2 s before it is needed) and keeps it across any gap shorter
  than that (turning it off and on again would cost more). The what-if profile has no queue
  wait: a clairvoyant knows when its job will start, so queueing costs it nothing (the bound
  ignores queue waits for the same reason).

It also prints how bursty each trace is: the prefill GPUs each aligned 2-s window's arrivals need
(their prefill GPU-seconds / 2 s), and how often and how far apart runs of windows above 3 GPUs
come.

    .venv/bin/python benchmarks/foresight.py --out docs/policies/foresight \\
        ../shared/traces/AzureLLMInferenceTrace_conv.csv ../shared/traces/AzureLLMInferenceTrace_code.csv
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from policy_sweep import write_table

from tsslurm.policy.reconcile import placed
from tsslurm.policy.snapshot import Decision, Snapshot
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile, QueueWait
from tsslurm.sim.command import SimulateArgs, prepare_trace
from tsslurm.sim.results import SimConfig
from tsslurm.sim.run import oracle_bounds, run_policy
from tsslurm.sim.trace import Trace

WINDOWS_S = (1, 2, 4, 8, 16, 32, 64)
DECODE_ITERATION_S = 0.025
PREFILL_MARGINS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0, 1.1, 1.25)
DECODE_MARGINS = (0.8, 1.0, 1.2)
"""Multiples of the need each schedule holds, every pair: the clairvoyant's cost-SLO points."""


def prefill_need(trace: Trace, profile: Profile, seconds: int) -> np.ndarray:
    """Prefill instances per second (fractional, before the margin)."""
    velocity = profile.partitions[0].velocities.prefill_tokens_per_s
    shortest = float(profile.slo.ttft_targets_s(trace.input_tokens).min())
    second = np.minimum(trace.arrival_s.astype(np.int64), seconds - 1)
    work = np.bincount(second, weights=trace.input_tokens / velocity, minlength=seconds)
    cumulative = np.concatenate([[0.0], np.cumsum(work)])
    need = np.zeros(seconds)
    for w in WINDOWS_S:
        ends = np.minimum(np.arange(seconds) + w, seconds)
        ahead = cumulative[ends] - cumulative[:seconds]
        need = np.maximum(need, ahead / (w + shortest))
    return need


def decode_need(trace: Trace, profile: Profile, seconds: int) -> np.ndarray:
    """Decoders per second (fractional, before the margin): reserved KV over capacity."""
    capacity = profile.partitions[0].velocities.kv_capacity_tokens
    ttft = profile.slo.ttft_targets_s(trace.input_tokens)
    start = trace.arrival_s + ttft
    end = start + np.maximum(trace.output_tokens - 1, 0) * DECODE_ITERATION_S
    reserved = (trace.input_tokens + trace.output_tokens).astype(np.float64)
    delta = np.zeros(seconds + 1)
    np.add.at(delta, np.minimum(start.astype(np.int64), seconds), reserved)
    np.add.at(delta, np.minimum(np.ceil(end).astype(np.int64), seconds), -reserved)
    return np.cumsum(delta)[:seconds] / capacity


def held(levels: np.ndarray, lead_s: int) -> np.ndarray:
    """What to hold at each second: the most needed over the next lead_s seconds."""
    padded = np.concatenate([levels, np.zeros(lead_s, dtype=levels.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, lead_s + 1)
    return windows.max(axis=1)


def schedule(trace: Trace, profile: Profile, prefill_margin: float,
             decode_margin: float) -> dict[str, np.ndarray]:
    seconds = math.ceil(trace.arrival_s[-1]) + 600
    lead = math.ceil(profile.partitions[0].model_load_s) + 2
    plan = {}
    for role, need in (("prefill", prefill_need(trace, profile, seconds) * prefill_margin),
                       ("decode", decode_need(trace, profile, seconds) * decode_margin)):
        plan[role] = held(np.ceil(need - 1e-9).astype(np.int64), lead)
    return plan


def bursts(trace: Trace, profile: Profile, window_s: float = 2.0, above: float = 3.0) -> str:
    """How bursty the trace's prefill is (see the module docstring)."""
    velocity = profile.partitions[0].velocities.prefill_tokens_per_s
    window = (trace.arrival_s // window_s).astype(np.int64)
    gpus = np.bincount(window, weights=trace.input_tokens / velocity) / window_s
    hot = np.flatnonzero(gpus > above)
    if not len(hot):
        return f"no {window_s:g}-s window needs more than {above:g} GPUs of prefill"
    starts = hot[np.concatenate([[True], np.diff(hot) > 1])] * window_s
    gaps = np.diff(starts)
    hours = max(float(trace.arrival_s[-1]), window_s) / 3600.0
    spread = (f"; gaps between runs: median {np.median(gaps):.0f} s, 10-90 % "
              f"{np.percentile(gaps, 10):.0f}-{np.percentile(gaps, 90):.0f} s" if len(gaps) else "")
    return (f"{window_s:g}-s windows need up to {gpus.max():.1f} GPUs of prefill (mean "
            f"{gpus.mean():.2f}); {len(hot)} need more than {above:g}, in {len(starts)} runs "
            f"({len(starts) / hours:.0f} an hour){spread}")


@cache
def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {role: data[role] for role in data.files}


def decide(snapshot: Snapshot, params: dict[str, Any], state: dict[str, Any]) -> Decision:
    plan = _load(params["schedule"])
    second = min(int(snapshot.now), len(plan["prefill"]) - 1)
    totals = {"prefill": int(plan["prefill"][second]), "decode": int(plan["decode"][second]),
              "convertible": 0}
    return Decision(placed(snapshot, totals), ["clairvoyant schedule"], {})


def without_queue_wait(profile: Profile) -> Profile:
    parts = [msgspec.structs.replace(p, queue_wait=QueueWait(distribution="fixed", mean_s=0.0))
             for p in profile.partitions]
    return msgspec.structs.replace(profile, partitions=parts)


def scenario_rows(label: str, trace: Trace, base: Profile, scratch: Path) -> list[dict]:
    """tokenscale and the clairvoyant at every pair of margins, on one trace, from a cold start."""
    bound = oracle_bounds(trace, base)["oracle_startup"]["gpu_hours"]
    clairvoyant_profile = without_queue_wait(base)
    runs = [("tokenscale", "tokenscale", base)]
    for prefill, decode in itertools.product(PREFILL_MARGINS, DECODE_MARGINS):
        plan_file = scratch / f"{label.replace(' ', '_')}-{prefill}-{decode}.npz"
        np.savez(plan_file, **schedule(trace, base, prefill, decode))
        runs.append((f"clairvoyant P x{prefill:.2f} D x{decode:.2f}",
                     f"foresight:decide@schedule={plan_file}", clairvoyant_profile))
    rows = []
    for name, ref, profile in runs:
        figures = run_policy(trace, profile, ref, 0, config=SimConfig()).figures
        rows.append({"scenario": label, "schedule": name, "slo": figures["slo_attainment"],
                     "gpu_hours": figures["gpu_hours"], "oracle_startup": bound,
                     "x_oracle_startup": round(figures["gpu_hours"] / bound, 3)})
        print(f"{label:14s} {name:28s} SLO {rows[-1]['slo']:.4f}  GPU-h "
              f"{rows[-1]['gpu_hours']:7.3f}  x oracle_startup {rows[-1]['x_oracle_startup']:5.2f}",
              flush=True)
    return rows


def cheapest_at(rows: list[dict], slo: float) -> dict | None:
    """The cheapest clairvoyant run with at least this SLO attainment."""
    fits = [r for r in rows if r["schedule"] != "tokenscale" and r["slo"] >= slo]
    return min(fits, key=lambda r: r["gpu_hours"], default=None)


def summary_line(rows: list[dict]) -> str:
    tokenscale = rows[0]
    at_95, at_same = cheapest_at(rows, 0.95), cheapest_at(rows, tokenscale["slo"])

    def cell(row: dict | None) -> str:
        if row is None:
            return "- | - | -"
        return f"{row['slo']:.3f} | {row['gpu_hours']:.2f} | {row['x_oracle_startup']:.2f}"
    versus = f"{tokenscale['gpu_hours'] / at_same['gpu_hours']:.2f}" if at_same else "-"
    return (f"| {tokenscale['scenario']} | {tokenscale['oracle_startup']:.2f} | {cell(at_95)} | "
            f"{cell(at_same)} | {cell(tokenscale)} | {versus} |")


HEADER = ("| scenario | oracle_startup GPU-h | clairvoyant >= 95 %: SLO | GPU-h | x bound | "
          "clairvoyant >= tokenscale's SLO: SLO | GPU-h | x bound | tokenscale: SLO | GPU-h | "
          "x bound | tokenscale / clairvoyant at >= its SLO |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--profile", default="llama3-8b-a100")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    base = load_profile(args.profile)
    scratch = Path(tempfile.mkdtemp(prefix="foresight-"))
    rows: list[dict] = []
    lines = [HEADER, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path in args.traces:
        for peak in (None, 16.0):
            trace, _ = prepare_trace(SimulateArgs(trace=path, profile=args.profile, policy="",
                                                  json_out=Path("-"), peak_instances=peak), base)
            label = f"{Path(path).stem.split('_')[-1]} {'peak 16' if peak else 'scale 1'}"
            print(f"{label}: {bursts(trace, base)}", flush=True)
            scenario = scenario_rows(label, trace, base, scratch)
            rows += scenario
            lines.append(summary_line(scenario))
    write_table(args.out, rows, lines)


if __name__ == "__main__":
    main()
