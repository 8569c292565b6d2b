"""The plot of `tsslurm simulate --plot`: per policy, input-token arrival rate against the ready
prefill velocity over time, instance counts by role, and the TTFT distribution of all policies.
matplotlib is imported here only (the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tsslurm.errors import UserError
from tsslurm.sim.run import PolicyRun
from tsslurm.sim.trace import Trace

ROLES = ("prefill", "decode", "convertible")
RATE_BIN_S = 10.0


def arrival_rate(trace: Trace, bin_s: float = RATE_BIN_S) -> tuple[np.ndarray, np.ndarray]:
    """Input tokens/s per `bin_s` bin, at the bins' starts."""
    bins = np.floor(trace.arrival_s / bin_s).astype(np.int64)
    totals = np.bincount(bins, weights=trace.input_tokens)
    return np.arange(len(totals)) * bin_s, totals / bin_s


def write_plot(path: str | Path, trace: Trace, runs: dict[str, list[PolicyRun]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, axes = plt.subplots(len(names) + 1, 2, figsize=(13, 2.6 * (len(names) + 1)),
                             squeeze=False)
    times, rate = arrival_rate(trace)
    for row, name in enumerate(names):
        timeline = runs[name][0].timeline
        _velocity(axes[row][0], name, times, rate, timeline)
        _instances(axes[row][1], name, timeline)
    _ttft(axes[-1][0], runs)
    axes[-1][1].axis("off")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(fig)


def _velocity(ax, name: str, times: np.ndarray, rate: np.ndarray, timeline: dict) -> None:
    ax.plot(times, rate, lw=0.8, label="input tokens/s arriving")
    ax.step(timeline["time_s"], timeline["ready_prefill_tokens_per_s"], where="post", lw=1.0,
            label="ready prefill velocity")
    ax.set_title(f"{name}: token arrival vs provisioned velocity", fontsize=9)
    ax.set_ylabel("tokens/s")
    ax.legend(fontsize=7, loc="upper right")


def _instances(ax, name: str, timeline: dict) -> None:
    for role in ROLES:
        counts = np.asarray(timeline["counts"][role])
        if len(counts) and counts.any():
            ax.step(timeline["time_s"], counts[:, :3].sum(axis=1), where="post", lw=1.0,
                    label=f"{role} (ready+starting+pending)")
            ax.step(timeline["time_s"], counts[:, 0], where="post", lw=0.6, ls="--",
                    label=f"{role} ready")
    ax.set_title(f"{name}: instances by role", fontsize=9)
    ax.set_ylabel("instances")
    ax.legend(fontsize=6, loc="upper right")


def _ttft(ax, runs: dict[str, list[PolicyRun]]) -> None:
    for name, policy_runs in runs.items():
        ttft = policy_runs[0].ttft_ms
        ttft = np.sort(ttft[np.isfinite(ttft)])
        if len(ttft):
            ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), lw=1.0, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("share of served requests")
    ax.set_title("TTFT distribution", fontsize=9)
    ax.legend(fontsize=7)
