"""Helpers of the `tsslurm up` tests (tests/component, tests/slurm, tests/vllm): a deployment run
by the real command line as a subprocess, observed through what a user has (status.json, the
event log, the SQLite store, the client library), and a replay of its recorded policy steps."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsslurm.broker.eventlog import read_events, read_segments
from tsslurm.broker.requests import RequestRecord
from tsslurm.broker.status import Status, read_status
from tsslurm.broker.store import JobRecord, read_jobs, read_requests
from tsslurm.client import AsyncClient, Client
from tsslurm.policy.runner import PolicyRunner

REPO = Path(__file__).resolve().parents[1]
TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def mock_profile_data() -> dict[str, Any]:
    """profiles/local-mock.yaml as data, with the slurm tier's small memory ask."""
    data = yaml.safe_load((REPO / "profiles" / "local-mock.yaml").read_text())
    data["partitions"][0]["mem"] = "200M"
    data["broker"]["tick_s"] = 0.5
    return data


def partition_like(data: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    """The mock profile's partition under another name (a dev-cluster partition), changed."""
    return {**copy.deepcopy(data["partitions"][0]), "name": name, **changes}


def profile_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def slurm_up(slurm: Any, root: Path, data: dict[str, Any], *args: str) -> Up:
    """A deployment on the test cluster, its jobs named with the test's prefix."""
    return Up(root, profile_yaml(data), "--backend", "slurm", "--job-prefix", slurm.prefix,
              *args, env={"SLURM_CONF": str(slurm.conf)})


@pytest.fixture
def slurm_deployments(slurm: Any, tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """make(profile data, *args) -> an Up on the test cluster; every one is stopped at teardown
    (a broker left running would resubmit what the slurm fixture cancels)."""
    made: list[Up] = []

    def make(data: dict[str, Any], *args: str) -> Up:
        made.append(slurm_up(slurm, tmp_path / f"up{len(made)}", data, *args))
        return made[-1]

    yield make
    for up in made:
        up.close()


def live_jobs(slurm: Any) -> list[Any]:
    """The test's jobs Slurm has not finished."""
    return [job for job in slurm.adapter.jobs(slurm.prefix) if not job.final]


def mock_profile(**replacements: str) -> str:
    """profiles/local-mock.yaml with `old=>new` text replacements (keys are only labels)."""
    text = (REPO / "profiles" / "local-mock.yaml").read_text()
    for old_new in replacements.values():
        old, new = old_new.split("=>")
        assert old in text, f"{old!r} is not in local-mock.yaml"
        text = text.replace(old, new)
    return text


class Up:
    """One deployment: `tsslurm up` in the foreground as a subprocess, with its own state dir."""

    def __init__(self, root: Path, profile_text: str, *args: str, env: dict[str, str] | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.state = root / "state"
        self.profile = root / "profile.yaml"
        self.profile.write_text(profile_text)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    # ---- processes ------------------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [TSSLURM, *args, "--profile", str(self.profile), "--state-dir", str(self.state)]

    def start(self, timeout_s: float = 60.0) -> Status:
        self.runs += 1
        since = time.time()
        log = open(self.root / f"up-{self.runs}.log", "wb")  # noqa: SIM115 (the child owns it)
        self.process = subprocess.Popen(self.command("up", *self.args), stdout=log,
                                        stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        log.close()
        return self.wait(lambda s: s.updated_at >= since and s.phase == "serving",
                         "the deployment to serve", timeout_s)

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout_s, env=self.env, cwd=self.root, check=False)

    def down(self, *flags: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
        done = self.cli("down", *flags, timeout_s=timeout_s)
        if self.process is not None:
            self.process.wait(timeout=30)
        return done

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        """Leave nothing running: a down --now when the broker lives, then kill what is left."""
        if self.process is not None and self.process.poll() is None:
            self.cli("down", "--now", timeout_s=60)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        elif (self.state / "broker.sqlite").exists():
            self.cli("down", "--now", timeout_s=60)

    # ---- observation ------------------------------------------------------------------------

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("up-*.log")))

    def status(self) -> Status:
        status = read_status(self.state)
        assert status is not None, f"no status.json:\n{self.log()[-3000:]}"
        return status

    def wait(self, done: Callable[[Status], bool], what: str, timeout_s: float = 60.0,
             interval_s: float = 0.1) -> Status:
        deadline = time.monotonic() + timeout_s
        while True:
            status = read_status(self.state)
            if status is not None and done(status):
                return status
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"tsslurm up exited ({self.process.returncode}) waiting "
                                     f"for {what}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last status: "
                                     f"{status}\n{self.log()[-4000:]}")
            time.sleep(interval_s)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        events = read_events(self.state / "events.jsonl")
        return [e for e in events if kind is None or e["kind"] == kind]

    def jobs(self) -> list[JobRecord]:
        return read_jobs(self.state / "broker.sqlite")

    def records(self, count: int = 0, timeout_s: float = 20.0) -> list[RequestRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = read_requests(self.state / "broker.sqlite")
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def client(self, **options: float) -> AsyncClient:
        return AsyncClient(state_dir=self.state, **options)  # type: ignore[arg-type]

    def sync_client(self, **options: float) -> Client:
        return Client(state_dir=self.state, **options)  # type: ignore[arg-type]


def ready(role: str, count: int = 1) -> Callable[[Status], bool]:
    """A status predicate: at least `count` ready workers of `role`."""
    return lambda s: sum(p.ready for p in s.pools if p.role == role) >= count


def counts(status: Status, role: str) -> dict[str, int]:
    lines = [p for p in status.pools if p.role == role]
    return {state: sum(getattr(p, state) for p in lines)
            for state in ("ready", "starting", "pending", "draining")}


def replay_mismatches(steps_file: Path) -> tuple[int, list[str]]:
    """Feed every recorded snapshot to a fresh PolicyRunner per segment: (steps, mismatches)."""
    replayed, mismatches = 0, []
    for segment in read_segments(steps_file):
        runner = PolicyRunner(segment.policy, segment.params)
        for record in segment.steps:
            step = runner.step(record.snapshot)
            actions = [{"type": type(a).__name__, **_fields(a)} for a in step.actions]
            replayed += 1
            if step.decision.targets != record.targets or actions != record.actions:
                mismatches.append(f"t={record.time}: {step.decision.targets} {actions} != "
                                  f"{record.targets} {record.actions}")
    return replayed, mismatches


def _fields(action: Any) -> dict[str, Any]:
    return {name: getattr(action, name) for name in action.__struct_fields__}


class StreamInBackground:
    """One streamed request in a thread (e.g. across a broker crash); `started` is set once 20
    tokens have arrived; `answer` holds the tokens; `finish` joins and returns them."""

    def __init__(self, deployment: Up, prompt: list[int], max_tokens: int, timeout_s: float):
        self.answer: list[int] = []
        self.started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(deployment, prompt, max_tokens, timeout_s))
        self._thread.start()
        assert self.started.wait(30), "the request never started streaming"

    def _run(self, deployment: Up, prompt: list[int], max_tokens: int, timeout_s: float) -> None:
        with deployment.sync_client(timeout_s=timeout_s, idle_s=0.5, reconnects=60) as client:
            for chunk in client.stream(prompt, max_tokens, request_id="across-the-crash"):
                self.answer.extend(chunk.token_ids)
                if len(self.answer) >= 20:
                    self.started.set()

    def finish(self, timeout_s: float = 90) -> list[int]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the streamed request never ended"
        return self.answer
