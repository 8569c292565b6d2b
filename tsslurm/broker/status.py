"""`tsslurm status`: what a running deployment looks like, as the `status.json` its broker writes
into the state directory every tick, and how it reads as text.

Why a file and not a control request: the state directory is how everything else finds the
deployment already (keys, connection file, SQLite), it is on the shared home filesystem, so the
status is readable from any login node while the broker runs elsewhere (in a Slurm job, say);
reading it costs the broker's loop nothing and needs no protocol change; it survives the broker
(a dead broker's last status is still there, with its age); and `--watch` is a re-read.
The file carries `updated_at`, so a reader knows how fresh it is. Pure except read/write."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.statedir import write_atomically

STATUS_FILE = "status.json"


class PoolLine(msgspec.Struct, frozen=True):
    role: str
    partition: str
    ready: int
    starting: int
    pending: int
    draining: int
    target: int | None


class JobLine(msgspec.Struct, frozen=True):
    job_id: str
    role: str
    partition: str
    state: str
    node: str
    age_s: float
    time_left_s: float | None
    reason: str
    slurm_state: str = ""
    worker_id: str | None = None


class PartitionLine(msgspec.Struct, frozen=True):
    name: str
    available: bool
    why: str | None
    queue_wait_s: float
    """The queue-wait estimate the policy uses (profile's, updated from observed waits)."""


class RateLine(msgspec.Struct, frozen=True):
    window_s: float
    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    """Predicted output tokens/s of the arrivals (TokenScale's lambda' minus the inputs)."""


class SloLine(msgspec.Struct, frozen=True):
    window_s: float
    finished: int
    attainment: float | None
    """Share of the finished requests that met their TTFT and TPOT targets (None: none finished)."""
    ttft_p90_ms: float | None
    tpot_p90_ms: float | None


class Status(msgspec.Struct, frozen=True, kw_only=True):
    deployment: str
    phase: str
    """"serving", "stopping" (a down in progress) or "stopped"."""
    pid: int
    host: str
    backend: str
    backend_why: str
    policy: str
    started_at: float
    updated_at: float
    client_address: str
    metrics_port: int | None
    pools: list[PoolLine]
    partitions: list[PartitionLine]
    jobs: list[JobLine]
    ended: list[JobLine]
    rates: list[RateLine]
    velocities: dict[str, float]
    """Provisioned tokens/s of the ready workers: "prefill" (V_P) and "decode" (V_D mean)."""
    slo: SloLine
    requests: dict[str, Any]
    decisions: list[dict[str, Any]]
    notices: list[dict[str, Any]]


def write_status(root: Path, status: Status) -> None:
    write_atomically(root / STATUS_FILE, msgspec.json.encode(status))


def read_status(root: Path) -> Status | None:
    try:
        return msgspec.json.decode((root / STATUS_FILE).read_bytes(), type=Status)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def render(status: Status, now: float | None = None, alive: bool = True) -> str:
    now = time.time() if now is None else now
    age = now - status.updated_at
    state = status.phase if alive else f"{status.phase} (broker not running)"
    uptime = _duration(now - status.started_at)
    metrics = f"   metrics: :{status.metrics_port}/metrics" if status.metrics_port else ""
    lines = [
        (f"{status.deployment}: {state}, broker pid {status.pid} on {status.host}, "
         f"{status.backend} backend, policy {status.policy}, up {uptime}, "
         f"status {age:.0f} s old"),
        f"clients: {status.client_address or '-'}{metrics}",
        "",
        _table(["pool", "partition", "ready", "starting", "pending", "draining", "target"],
               [[p.role, p.partition, p.ready, p.starting, p.pending, p.draining,
                 "-" if p.target is None else p.target] for p in status.pools]),
        "",
        "partitions: " + "; ".join(
            f"{p.name} {'available' if p.available else 'UNAVAILABLE: ' + (p.why or '')}"
            f" (queue wait ~{p.queue_wait_s:.0f} s)" for p in status.partitions),
        "",
        _table(["job", "role", "partition", "node", "state", "age", "time left", "why"],
               [[j.job_id, j.role, j.partition, j.node or "-", j.state, _duration(j.age_s),
                 "-" if j.time_left_s is None else _duration(j.time_left_s), j.reason[:60]]
                for j in status.jobs]) if status.jobs else "jobs: none",
        "",
        _rates(status),
        _slo(status.slo),
        (f"requests: {status.requests.get('in_flight', 0)} in flight, "
         f"{status.requests.get('queued', 0)} queued, "
         f"{status.requests.get('late', 0)} waiting past their TTFT"),
    ]
    if status.decisions:
        lines += ["", "last decisions:"]
        for decision in status.decisions[-5:]:
            lines.append(f"  {_clock(decision['time'])} {_targets(decision['targets'])}"
                         f"{_actions(decision['actions'])}")
            lines += [f"      {reason}" for reason in decision["reasons"][:4]]
    if status.notices:
        lines += ["", "notices:"]
        lines += [f"  {_clock(n['time'])} {n['kind']} {n['subject']}: {n['text']}"
                  for n in status.notices[-5:]]
    return "\n".join(lines)


def _rates(status: Status) -> str:
    rates = ", ".join(f"{r.input_tokens_per_s:.0f} in + {r.output_tokens_per_s:.0f} out tok/s "
                      f"({r.requests_per_s:.2f} req/s) over {r.window_s:.0f} s"
                      for r in status.rates)
    provisioned = ", ".join(f"{stage} {value:.0f} tok/s"
                            for stage, value in status.velocities.items())
    return f"arrivals: {rates or 'none yet'}\nprovisioned (ready workers): {provisioned}"


def _slo(slo: SloLine) -> str:
    if slo.attainment is None:
        return f"SLO: no request finished in the last {slo.window_s:.0f} s"
    p90 = ", ".join(f"{name} p90 {value:.0f} ms" for name, value in
                    (("TTFT", slo.ttft_p90_ms), ("TPOT", slo.tpot_p90_ms)) if value is not None)
    return (f"SLO: {100 * slo.attainment:.1f} % of {slo.finished} requests met it in the last "
            f"{slo.window_s:.0f} s ({p90})")


def _targets(targets: dict[str, dict[str, int]]) -> str:
    return " ".join(f"{role}={sum(parts.values())}" for role, parts in targets.items())


def _actions(actions: list[dict[str, Any]]) -> str:
    if not actions:
        return ""
    words = []
    for action in actions:
        if action["type"] == "Submit":
            words.append(f"submit {action['count']} {action['role']} on {action['partition']}")
        else:
            words.append(f"{action['type'].lower()} {action['job_id']}")
    return " -> " + ", ".join(words)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
