"""Where convertible decoders matter: tokenscale with and without them (pools.convertible.max = 0)
and two baselines, as the start-up of new capacity grows from 5 s to 10 minutes (half queue
wait, exponential, half model load).

    .venv/bin/python benchmarks/policy_startup.py --out docs/policies/startup \\
        ../shared/traces/AzureLLMInferenceTrace_conv.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
from policy_sweep import run_trace, write_table

from tsslurm.profile import load_profile
from tsslurm.profile.schema import PoolBounds, Profile, QueueWait
from tsslurm.sim.command import SimulateArgs, prepare_trace

STARTUPS_S = (5.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REFS = ["tokenscale", "aibrix", "distserve@utilisation=0.4"]


def with_startup(profile: Profile, startup_s: float, convertibles: bool = True) -> Profile:
    parts = [msgspec.structs.replace(p, queue_wait=QueueWait(mean_s=startup_s / 2),
                                     model_load_s=startup_s / 2) for p in profile.partitions]
    pools = profile.pools if convertibles else msgspec.structs.replace(
        profile.pools, convertible=PoolBounds(min=0, max=0))
    return msgspec.structs.replace(profile, partitions=parts, pools=pools)


def row(label: str, startup_s: float, figures: dict[str, Any], oracle_startup: float) -> dict:
    return {"policy": label, "startup_s": startup_s, "slo": figures["slo_attainment"],
            "slo_after_warmup": figures["slo_after_warmup"], "gpu_hours": figures["gpu_hours"],
            "gpu_hours_after_warmup": figures["gpu_hours_after_warmup"],
            "x_oracle_startup": round(figures["gpu_hours"] / oracle_startup, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--profile", default="llama3-8b-a100")
    parser.add_argument("--peak-instances", type=float, default=16.0)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    base = load_profile(args.profile)
    trace, _ = prepare_trace(SimulateArgs(trace=args.trace, profile=args.profile, policy="",
                                          json_out=Path("-"),
                                          peak_instances=args.peak_instances), base)
    rows = []
    for startup in STARTUPS_S:
        report = run_trace(trace, with_startup(base, startup), REFS)
        bound = report["oracle_startup"]["gpu_hours"]
        rows += [row(ref, startup, report["policies"][ref], bound) for ref in REFS]
        bare = run_trace(trace, with_startup(base, startup, convertibles=False), ["tokenscale"])
        rows.append(row("tokenscale, no convertibles", startup, bare["policies"]["tokenscale"],
                        bound))
        for line in rows[-len(REFS) - 1:]:
            print(line, flush=True)
    header = ("| start-up | policy | SLO | GPU-h | x oracle_startup | SLO after 300 s | "
              "GPU-h after 300 s |")
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['startup_s']:.0f} s | {r['policy']} | {r['slo']:.3f} | {r['gpu_hours']:.2f} | "
              f"{r['x_oracle_startup']:.2f} | {r['slo_after_warmup']:.3f} | "
              f"{r['gpu_hours_after_warmup']:.2f} |" for r in rows]
    write_table(args.out, rows, lines)


if __name__ == "__main__":
    main()
