"""`tsslurm simulate`: from the command's arguments to the JSON file, the table and the plot.
Prepares the trace (window, then rate scale), runs the policies with a progress bar, and writes
the results. Errors a user can fix are UserErrors (printed without a traceback)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsslurm.errors import UserError
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile
from tsslurm.sim.run import make_runner, policy_names, simulate
from tsslurm.sim.trace import (
    Trace,
    TraceError,
    compress_time,
    parse_window,
    scale_for_peak,
    scale_rate,
    window,
)
from tsslurm.sim.trace_io import load_trace


@dataclass(frozen=True)
class SimulateArgs:
    trace: str
    profile: str
    policy: str
    json_out: Path
    scale: float | None = None
    peak_instances: float | None = None
    window: str | None = None
    seed: int = 0
    seeds: int = 1
    plot_out: Path | None = None
    processes: int = 2
    quiet: bool = False
    speedup: float = 1.0
    """Arrivals this many times as fast (the span shrinks): the scenario `tsslurm replay
    --speedup` sends to a live deployment."""


def prepare_trace(args: SimulateArgs, profile: Profile) -> tuple[Trace, float]:
    trace = load_trace(args.trace)
    if args.window:
        trace = window(trace, *parse_window(args.window))
    if args.scale is not None and args.peak_instances is not None:
        raise TraceError("give --scale or --peak-instances, not both")
    factor = args.scale if args.scale is not None else 1.0
    if args.peak_instances is not None:
        factor = scale_for_peak(trace, profile, args.peak_instances)
    scaled = scale_rate(trace, factor, seed=args.seed)
    if not math.isfinite(args.speedup) or args.speedup <= 0:
        raise TraceError(f"bad --speedup {args.speedup!r}: it must be a number > 0")
    if args.speedup != 1.0:
        scaled = compress_time(scaled, args.speedup)
    return scaled, factor


def run_simulate(args: SimulateArgs) -> dict[str, Any]:
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    profile = load_profile(args.profile)
    trace, factor = prepare_trace(args, profile)
    refs = policy_names(args.policy)
    for ref in refs:
        make_runner(ref, profile)
    seeds = [args.seed + k for k in range(args.seeds)]
    if not args.quiet:
        print(f"trace {trace.summary()} (rate scale {factor:.4g})")
    with _progress(trace, refs, seeds, args.processes, args.quiet) as tick:
        report, runs = simulate(trace, profile, refs, seeds, args.processes, tick)
    report["rate_scale"] = round(factor, 6)
    if args.speedup != 1.0:
        report["speedup"] = args.speedup
    from tsslurm.sim.report import print_table, write_json

    write_json(report, args.json_out)
    if args.plot_out is not None:
        from tsslurm.sim.plot import write_plot

        write_plot(args.plot_out, trace, runs)
    if not args.quiet:
        print_table(report)
    return report


class _progress:
    """A rich progress bar over simulated seconds of every run (finished runs when the runs go
    to worker processes)."""

    def __init__(self, trace: Trace, refs: list[str], seeds: list[int], processes: int,
                 quiet: bool):
        self.span = max(trace.span_s, 1.0)
        self.runs = len(refs) * len(seeds)
        self.parallel = processes > 1 and self.runs > 1
        self.quiet = quiet
        self.done: dict[str, float] = {}

    def __enter__(self):
        if self.quiet:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
        self.bar.start()
        self.task = self.bar.add_task("simulating", total=self.runs * self.span)
        return self._tick

    def _tick(self, ref: str, now: float) -> None:
        if now == float("inf"):
            self.bar.advance(self.task, self.span)
            return
        previous = self.done.get(ref, 0.0)
        if now < previous:
            previous = 0.0
        if now - previous >= self.span / 200:
            self.bar.update(self.task, description=f"simulating {ref}")
            self.bar.advance(self.task, min(now, self.span) - previous)
            self.done[ref] = min(now, self.span)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.stop()
