"""Emulation against simulation: per policy, the SLO attainment and GPU time a live replay
measured next to what `tsslurm simulate` predicted for the same scenario, their differences, and
whether the two rank the policies alike. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLO_TOLERANCE_PP = 5.0
"""The target: the simulator within 5 percentage points of the emulation's SLO attainment..."""
GPU_TOLERANCE = 0.10
"""...and within 10 % of its GPU time."""


@dataclass(frozen=True)
class Row:
    policy: str
    slo_emulated: float
    slo_simulated: float
    gpu_h_emulated: float
    gpu_h_simulated: float

    @property
    def slo_diff_pp(self) -> float:
        return 100.0 * (self.slo_simulated - self.slo_emulated)

    @property
    def gpu_diff(self) -> float:
        """(simulated - emulated) / emulated GPU time."""
        if self.gpu_h_emulated <= 0:
            return float("inf") if self.gpu_h_simulated > 0 else 0.0
        return (self.gpu_h_simulated - self.gpu_h_emulated) / self.gpu_h_emulated

    @property
    def within(self) -> bool:
        return abs(self.slo_diff_pp) <= SLO_TOLERANCE_PP and abs(self.gpu_diff) <= GPU_TOLERANCE


def rows(emulated: dict[str, dict[str, Any]], simulated: dict[str, Any]) -> list[Row]:
    """`emulated`: policy -> its replay report; `simulated`: the simulate report of them all."""
    table = []
    for policy, replay in emulated.items():
        if policy not in simulated["policies"]:
            raise ValueError(f"policy {policy} is not in the simulation's report")
        e = replay["policies"][policy]
        s = simulated["policies"][policy]
        table.append(Row(policy, e["slo_attainment"], s["slo_attainment"], e["gpu_hours"],
                         s["gpu_hours"]))
    return table


def ranking(values: dict[str, float], tie: float) -> list[list[str]]:
    """Policies best first, grouped: values within `tie` of the group's first are tied."""
    ordered = sorted(values, key=lambda name: (-values[name], name))
    groups: list[list[str]] = []
    for name in ordered:
        if groups and values[groups[-1][0]] - values[name] <= tie:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def same_ranking(table: list[Row], tie_pp: float = 0.0) -> bool:
    """Whether the simulator orders the policies by SLO attainment as the emulation does
    (differences up to `tie_pp` points count as ties in both)."""
    emulated = ranking({r.policy: 100.0 * r.slo_emulated for r in table}, tie_pp)
    simulated = ranking({r.policy: 100.0 * r.slo_simulated for r in table}, tie_pp)
    return emulated == simulated


def format_table(table: list[Row]) -> str:
    lines = [(f"{'policy':<12} {'SLO emu':>8} {'SLO sim':>8} {'diff pp':>8} {'GPU-h emu':>10} "
             f"{'GPU-h sim':>10} {'diff':>7}  within target")]
    for r in table:
        lines.append(f"{r.policy:<12} {100 * r.slo_emulated:7.1f}% {100 * r.slo_simulated:7.1f}% "
                     f"{r.slo_diff_pp:+8.1f} {r.gpu_h_emulated:10.4f} {r.gpu_h_simulated:10.4f} "
                     f"{100 * r.gpu_diff:+6.1f}%  {'yes' if r.within else 'NO'}")
    return "\n".join(lines)
