"""The deployment's append-only logs in its state directory, as JSON lines:

- `events.jsonl`: every scaling decision that changed targets or acted (targets, reasons,
  actions), every job transition with its reason, partition availability, notices, start and
  stop. What `tsslurm status` shows as "last decisions", and the audit trail of a deployment.
- `steps.jsonl`: every policy step: the snapshot the policy saw, the decision and the actions,
  after a `runner` line naming the policy. Feeding these snapshots to a fresh PolicyRunner gives
  the same decisions (the parity test), so a live run can be replayed and compared offline.

A file over `max_bytes` is renamed to `<name>.1` (replacing the older one) and started afresh.
Writes happen on the broker's loop; a line is a few kilobytes at most, once per tick."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.policy.runner import Step
from tsslurm.policy.snapshot import Action, Decision, Snapshot

MAX_BYTES = 64 << 20
EVENTS_FILE = "events.jsonl"
STEPS_FILE = "steps.jsonl"

_encoder = msgspec.json.Encoder()


class StepRecord(msgspec.Struct, frozen=True):
    """One line of steps.jsonl: a policy step."""

    time: float
    snapshot: Snapshot
    targets: dict[str, dict[str, int]]
    reasons: list[str]
    actions: list[dict[str, Any]]


class RunnerLine(msgspec.Struct, frozen=True):
    """A new PolicyRunner starts here (a `tsslurm up`, or one after a restart)."""

    time: float
    runner: str
    params: dict[str, Any] = {}


class Segment(msgspec.Struct, frozen=True):
    """The steps of one runner, in order."""

    policy: str
    params: dict[str, Any]
    steps: list[StepRecord]


def action_dict(action: Action) -> dict[str, Any]:
    return {"type": type(action).__name__, **msgspec.structs.asdict(action)}


def decision_summary(decision: Decision, actions: list[Action]) -> dict[str, Any]:
    return {"targets": decision.targets, "reasons": decision.reasons,
            "actions": [action_dict(a) for a in actions]}


class _Lines:
    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self._file = self._open()

    def _open(self) -> io.FileIO:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(descriptor, "ab", buffering=0)  # type: ignore[return-value]

    def write(self, data: bytes) -> None:
        self._file.write(data + b"\n")
        if self._file.tell() > self.max_bytes:
            self._file.close()
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self._file = self._open()

    def close(self) -> None:
        self._file.close()


class EventLog:
    def __init__(self, root: Path, max_bytes: int = MAX_BYTES):
        self.events_path = root / EVENTS_FILE
        self.steps_path = root / STEPS_FILE
        self._events = _Lines(self.events_path, max_bytes)
        self._steps = _Lines(self.steps_path, max_bytes)

    def event(self, time: float, kind: str, /, **fields: Any) -> None:
        self._events.write(_encoder.encode({**fields, "time": time, "kind": kind}))

    def runner(self, time: float, policy: str, params: dict[str, Any]) -> None:
        self._steps.write(_encoder.encode(RunnerLine(time, policy, params)))

    def step(self, snapshot: Snapshot, step: Step) -> None:
        record = StepRecord(snapshot.now, snapshot, step.decision.targets, step.decision.reasons,
                            [action_dict(a) for a in step.actions])
        self._steps.write(_encoder.encode(record))

    def close(self) -> None:
        self._events.close()
        self._steps.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every line of an events file (a line cut short by a crash is skipped)."""
    return list(_json_lines(path))


def read_segments(path: Path) -> list[Segment]:
    """steps.jsonl as runner segments; steps before the first runner line are left out."""
    segments: list[Segment] = []
    for line in _json_lines(path, raw=True):
        try:
            runner = msgspec.json.decode(line, type=RunnerLine)
        except msgspec.ValidationError:
            step = _decode_step(line)
            if segments and step is not None:
                segments[-1].steps.append(step)
            continue
        segments.append(Segment(runner.runner, runner.params, []))
    return segments


def _decode_step(line: bytes) -> StepRecord | None:
    try:
        return msgspec.json.decode(line, type=StepRecord)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _json_lines(path: Path, raw: bool = False) -> Iterator[Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            decoded = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        yield line if raw else decoded
