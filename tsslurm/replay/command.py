"""`tsslurm replay`: find the live deployment (its state directory), prepare the trace as
`tsslurm simulate` would, send it, and write the report (simulate's JSON shape) and its table.

A deployment that is not serving is refused before anything is sent. A broker that dies during the
replay ends it: the figures of what was measured are written (marked `partial`) and the command
fails with a message saying so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsslurm.broker.status import Status, read_status
from tsslurm.broker.store import Store, read_jobs
from tsslurm.errors import UserError
from tsslurm.profile import load_profile
from tsslurm.profile import state_dir as profile_state_dir
from tsslurm.profile.schema import Profile
from tsslurm.replay.driver import ReplayRun, replay
from tsslurm.replay.metrics import policy_figures, report, send_lag
from tsslurm.replay.schedule import Scenario, prepare
from tsslurm.sim.trace import Trace
from tsslurm.sim.trace_io import load_trace

STATUS_FRESH_S = 30.0
"""A status file older than this means no broker is running."""
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ReplayArgs:
    trace: str
    json_out: Path
    window: str | None = None
    scale: float = 1.0
    speedup: float = 1.0
    seed: int = 0
    state_dir: Path | None = None
    profile: str | None = None
    timeout: float = 600.0
    quiet: bool = False


def deployment_root(args: ReplayArgs) -> Path:
    if args.state_dir is not None:
        return args.state_dir.expanduser()
    if args.profile is None:
        raise UserError("say which deployment to replay against: --state-dir DIR or --profile P")
    return profile_state_dir(load_profile(args.profile))


def serving_status(root: Path, now: float) -> Status:
    """The deployment's status, or a clear error when no broker serves it."""
    status = read_status(root)
    if status is None:
        raise UserError(f"no deployment at {root} (no status.json): start one with `tsslurm up`")
    age = now - status.updated_at
    if status.phase != "serving" or age > STATUS_FRESH_S:
        raise UserError(f"the deployment at {root} is not serving (phase {status.phase}, status "
                        f"{age:.0f} s old): start it with `tsslurm up`")
    return status


def deployment_profile(root: Path, given: str | None) -> Profile:
    """The profile the deployment runs (the one its broker recorded), unless one is given."""
    if given is not None:
        return load_profile(given)
    path = Store(root / "broker.sqlite").deployment().get("profile_path")
    if not path:
        raise UserError(f"the deployment at {root} recorded no profile: give --profile")
    return load_profile(path)


def run_replay(args: ReplayArgs, say: Callable[[str], None] = print) -> dict[str, Any]:
    root = deployment_root(args)
    scenario = Scenario(args.window, args.scale, args.speedup, args.seed)
    trace = prepare(load_trace(args.trace), scenario)
    status = serving_status(root, time.time())
    profile = deployment_profile(root, args.profile)
    if not args.quiet:
        say(f"replaying {trace.summary()} against {status.deployment} (policy {status.policy}, "
            f"state {root})")
    run = asyncio.run(_send(root, trace, args, None if args.quiet else say))
    document = build_report(trace, profile, status.policy, run, root, scenario)
    from tsslurm.sim.report import print_table, write_json

    write_json(document, args.json_out)
    if run.broker_error is not None:
        raise UserError(f"the broker stopped answering after {run.sent} of {len(trace)} requests "
                        f"were sent ({run.broker_error}); the partial results are in "
                        f"{args.json_out}")
    if not args.quiet:
        print_table(document)
    return document


def build_report(trace: Trace, profile: Profile, policy: str, run: ReplayRun, root: Path,
                 scenario: Scenario) -> dict[str, Any]:
    jobs = read_jobs(root / "broker.sqlite")
    figures = policy_figures(trace, profile, run.measured, jobs, run.started_at, run.run_s)
    extra = {"started_at": round(run.started_at, 3), "sent": run.sent, "partial":
             run.broker_error is not None, "broker_error": run.broker_error,
             "window": scenario.window, **send_lag(trace, run.measured)}
    return report(trace, profile, policy, figures, seed=scenario.seed, rate_scale=scenario.scale,
                  speedup=scenario.speedup, replay=extra)


async def _send(root: Path, trace: Trace, args: ReplayArgs,
                say: Callable[[str], None] | None) -> ReplayRun:
    from tsslurm.client import AsyncClient

    shown = {"at": 0.0}

    def progress(sent: int, done: int, elapsed: float) -> None:
        if say is not None and elapsed - shown["at"] >= PROGRESS_EVERY_S:
            shown["at"] = elapsed
            say(f"{elapsed:6.0f} s: sent {sent}/{len(trace)}, answered {done}")

    async with AsyncClient(state_dir=root, timeout_s=args.timeout) as client:
        return await replay(client, trace, seed=args.seed, timeout_s=args.timeout,
                            progress=progress)
