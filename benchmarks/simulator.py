"""Simulator speed: the issue's two targets, printed next to a reference measured in the same run.

1. The full Azure conversation trace (19,366 requests, 1 h) for every registered policy, in two
   worker processes (target: under 60 s on a 2-core machine) and, for reference, in one.
2. A synthetic 1,000,000-request trace (Poisson, conv-like lengths) for one policy
   (target: under 5 minutes).
Reference: a bare heapq loop pushing and popping the same number of events the run handled
per request (6), so the simulator's cost per request reads against Python's floor on this machine.

    .venv/bin/python benchmarks/simulator.py [--only conv|million] [--profile] [--requests N]
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsslurm.profile import load_profile
from tsslurm.sim import synthetic
from tsslurm.sim.run import policy_names, run_policy, simulate
from tsslurm.sim.trace_io import load_trace

CONV = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
EVENTS_PER_REQUEST = 6


def bare_heap_seconds(events: int) -> float:
    start = time.perf_counter()
    heap: list[tuple[float, int]] = []
    for i in range(events):
        heapq.heappush(heap, (i * 0.37 % 1000.0, i))
        if len(heap) > 64:
            heapq.heappop(heap)
    return time.perf_counter() - start


def conv_all_policies() -> None:
    profile = load_profile("llama3-8b-a100")
    trace = load_trace(str(CONV))
    refs = policy_names("all")
    print(f"conv trace: {trace.summary()}; policies: {', '.join(refs)}")
    for processes in (2, 1):
        start = time.perf_counter()
        report, _ = simulate(trace, profile, refs, [0], processes=processes)
        took = time.perf_counter() - start
        verdict = "target < 60 s: met" if took < 60 else "target < 60 s: MISSED"
        print(f"  all {len(refs)} policies + oracle bounds, {processes} process(es): {took:6.1f} s"
              + (f"   ({verdict})" if processes == 2 else ""))
    for ref, figures in report["policies"].items():
        print(f"    {ref:12s} SLO {figures['slo_attainment']:.3f}  GPU-h {figures['gpu_hours']:.2f}")


def million(requests: int, policy: str, profile_hot: bool) -> None:
    profile = load_profile("llama3-8b-a100")
    start = time.perf_counter()
    trace = synthetic.poisson(100.0, requests, seed=1, name="synthetic-1M")
    made = time.perf_counter() - start
    print(f"synthetic trace: {trace.summary()} (generated in {made:.1f} s)")
    profiler = cProfile.Profile() if profile_hot else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    run = run_policy(trace, profile, policy, seed=0)
    if profiler is not None:
        profiler.disable()
    took = time.perf_counter() - start
    verdict = "met" if took < 300 else "MISSED"
    print(f"  {policy}: {took:6.1f} s for {requests:,} requests = {1e6 * took / requests:.1f} us "
          f"per request (target < 300 s: {verdict}); SLO {run.figures['slo_attainment']:.3f}, "
          f"GPU-h {run.figures['gpu_hours']:.1f}")
    reference = bare_heap_seconds(EVENTS_PER_REQUEST * requests)
    print(f"  reference: bare heapq push+pop of {EVENTS_PER_REQUEST} events per request: "
          f"{reference:.1f} s ({1e6 * reference / requests:.1f} us per request)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("conv", "million"))
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--policy", default="tokenscale")
    parser.add_argument("--profile", action="store_true", help="print the hot functions")
    args = parser.parse_args()
    if args.only in (None, "conv"):
        conv_all_policies()
    if args.only in (None, "million"):
        million(args.requests, args.policy, args.profile)


if __name__ == "__main__":
    main()
