"""The cost-SLO comparison of tokenscale with the baselines (issue 6): every baseline swept over
its main knob (the registry's `knob` / `knob_values`), tokenscale at its one fixed default, on
each scenario. Prints a table per scenario, whether tokenscale is dominated, and what each
baseline's curve costs at tokenscale's SLO; writes the figures as JSON and the curves as a plot.

    .venv/bin/python benchmarks/policy_sweep.py --out docs/policies/sweep \\
        ../shared/traces/AzureLLMInferenceTrace_conv.csv ../shared/traces/AzureLLMInferenceTrace_code.csv

Each trace runs at its own rate and at --peak-instances 16. Every figure is given from zero (every
run starts from the pools' minimum, warm) and after a 300-s warm-up that is not scored, the same
for every policy and bound: the requests arriving after 300 s, the GPU time billed after it, and
bounds that let any capacity run at 300 s for free (SimConfig.warmup_s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tsslurm.policy.registry import resolve_policy
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile
from tsslurm.sim.command import SimulateArgs, prepare_trace
from tsslurm.sim.results import SimConfig
from tsslurm.sim.run import simulate
from tsslurm.sim.trace import Trace

WARMUP_S = 300.0
BASELINES = ("aibrix", "distserve", "blitzscale", "heteroscale", "dynamo", "static")


def sweep_refs(policies: tuple[str, ...]) -> list[str]:
    refs = ["tokenscale"]
    for name in policies:
        spec = resolve_policy(name)
        refs += [f"{name}@{spec.knob}={value:g}" for value in spec.knob_values]
    return refs


def run_scenario(trace_path: str, peak: float | None, profile_name: str,
                 refs: list[str], window: str | None = None) -> dict[str, Any]:
    profile = load_profile(profile_name)
    args = SimulateArgs(trace=trace_path, profile=profile_name, policy="", json_out=Path("-"),
                        peak_instances=peak, window=window)
    trace, factor = prepare_trace(args, profile)
    report = run_trace(trace, profile, refs)
    report["rate_scale"] = round(factor, 6)
    report["peak_instances"] = peak
    report["window"] = window
    return report


def run_trace(trace: Trace, profile: Profile, refs: list[str]) -> dict[str, Any]:
    """The simulate report of `refs` on `trace`, with each policy's figures after the warm-up."""
    report, _ = simulate(trace, profile, refs, [0], processes=2,
                         config=SimConfig(warmup_s=WARMUP_S))
    return report


def compare(report: dict[str, Any]) -> list[str]:
    """Lines saying, per baseline, whether it dominates tokenscale and its cost at ts's SLO,
    from zero and after the warm-up."""
    lines = ["  from zero:"] + _compare(report, "slo_attainment", "gpu_hours")
    lines += [f"  after {WARMUP_S:.0f} s:"]
    return lines + _compare(report, "slo_after_warmup", "gpu_hours_after_warmup")


def _compare(report: dict[str, Any], slo_key: str, cost_key: str) -> list[str]:
    policies = report["policies"]
    ts = {"slo_attainment": policies["tokenscale"][slo_key],
          "gpu_hours": policies["tokenscale"][cost_key]}
    lines = []
    for name in BASELINES:
        points = sorted((p[slo_key], p[cost_key], ref)
                        for ref, p in policies.items() if ref.split("@")[0] == name)
        if not points:
            continue
        dominating = [ref for slo, cost, ref in points
                      if slo >= ts["slo_attainment"] and cost <= ts["gpu_hours"]]
        reaching = [cost for slo, cost, _ in points if slo >= ts["slo_attainment"]]
        at_slo = f"{min(reaching):.2f} GPU-h" if reaching else "never reaches it"
        lines.append(f"  {name:<12} dominates tokenscale: {', '.join(dominating) or 'no'}; "
                     f"cheapest point at >= tokenscale's SLO: {at_slo}")
    return lines


def table(report: dict[str, Any]) -> list[str]:
    """From zero (the whole run) and after the warm-up (requests arriving after WARMUP_S, GPU
    time billed after it, bounds over the same)."""
    o, os_ = report["oracle"]["gpu_hours"], report["oracle_startup"]["gpu_hours"]
    late_o = report["oracle_after_warmup"]["gpu_hours"]
    late_os = report["oracle_startup_after_warmup"]["gpu_hours"]
    w = f"{WARMUP_S:.0f} s"
    header = (f"| policy | SLO | GPU-h | x oracle | x oracle_startup | SLO after {w} | "
              f"GPU-h after {w} | x oracle_startup after {w} |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ref, p in report["policies"].items():
        late = p["gpu_hours_after_warmup"]
        lines.append(f"| {ref} | {p['slo_attainment']:.3f} | {p['gpu_hours']:.2f} | "
                     f"{p['gpu_hours'] / o:.2f} | {p['gpu_hours'] / os_:.2f} | "
                     f"{p['slo_after_warmup']:.3f} | {late:.2f} | {late / late_os:.2f} |")
    bare = (report["oracle"]["gpu_hours_without_minimums"],
            report["oracle_startup"]["gpu_hours_without_minimums"],
            report["oracle_after_warmup"]["gpu_hours_without_minimums"],
            report["oracle_startup_after_warmup"]["gpu_hours_without_minimums"])
    lines.append(f"| oracle / oracle_startup | | {o:.2f} / {os_:.2f} | | | | "
                 f"{late_o:.2f} / {late_os:.2f} | |")
    lines.append(f"| same, without the pools' minimum | | {bare[0]:.2f} / {bare[1]:.2f} | | | | "
                 f"{bare[2]:.2f} / {bare[3]:.2f} | |")
    return lines


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = (len(reports) + 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(12, 5 * rows), squeeze=False)
    for axis, report in zip(axes.flat, reports):
        for name in BASELINES:
            points = sorted((p["gpu_hours"], p["slo_attainment"])
                            for ref, p in report["policies"].items() if ref.split("@")[0] == name)
            if points:
                axis.plot(*np.array(points).T, marker="o", label=name)
        ts = report["policies"]["tokenscale"]
        axis.plot(ts["gpu_hours"], ts["slo_attainment"], marker="*", markersize=16, color="black",
                  linestyle="none", label="tokenscale")
        axis.axvline(report["oracle_startup"]["gpu_hours"], color="grey", linestyle="--",
                     label="oracle_startup")
        axis.set_title(_scenario(report))
        axis.set_xlabel("GPU-hours")
        axis.set_ylabel("SLO attainment")
        axis.set_ylim(0.5, 1.0)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _scenario(report: dict[str, Any]) -> str:
    peak = report.get("peak_instances")
    label = report.get("label") or (f"peak {peak:g}" if peak else "scale 1")
    return f"{report['trace']} ({label})"


def write_table(out: Path, rows: list[dict[str, Any]], lines: list[str]) -> None:
    """OUT.json (the rows) and OUT.md (the table), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--profile", default="llama3-8b-a100")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    parser.add_argument("--peaks", default="1,16", help="1 = the trace's own rate")
    args = parser.parse_args()
    refs = sweep_refs(BASELINES)
    reports = []
    for trace_path in args.traces:
        for peak in (float(p) for p in args.peaks.split(",")):
            report = run_scenario(trace_path, None if peak == 1 else peak, args.profile, refs)
            reports.append(report)
            print(f"\n## {_scenario(report)}: rate scale {report['rate_scale']}\n")
            print("\n".join(table(report)))
            print("\n".join(compare(report)), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(reports, indent=1, sort_keys=True))
    plot(reports, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
