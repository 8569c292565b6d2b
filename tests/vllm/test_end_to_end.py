"""End to end with real vLLM engines: `tsslurm broker` and two `python -m tsslurm.launcher`
processes (a prefiller and a convertible decoder, each pinned to its own CPU) serving the
local-tiny profile, requests through the client library.

Phase 1, both workers up: requests take the disaggregated path (prefill on one engine, NIXL KV
handoff, decode on the other). Phase 2, the prefiller killed outright (its engine process must not
outlive it): the convertible decoder serves the same prompts whole (the converted/plain path). Both give exactly the tokens of a plain vLLM
engine, and the decoder's own totals, logged when it stops, show that phase 1's prompt KV was
pulled, not computed. Prefix caching is off so phase 2 recomputes every prompt."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from vllm_helpers import PlainReference, random_prompts

from tsslurm.broker.requests import RequestRecord
from tsslurm.broker.store import read_requests
from tsslurm.client import Client
from tsslurm.profile.load import PROFILE_DIR
from tsslurm.statedir import StateDir

TSSLURM = str(Path(sys.executable).parent / "tsslurm")
PROMPTS = random_prompts(3, (80, 400), seed=11)
MAX_TOKENS = 16


class Deployment:
    """The broker and launchers as subprocesses, each with its own log file."""

    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.profile = root / "local-tiny.yaml"
        text = (PROFILE_DIR / "local-tiny.yaml").read_text()
        text = re.sub(r"(?m)^  path: .*$", f"  path: {model}", text)
        text = text.replace("  enforce_eager: true",
                            "  enforce_eager: true\n  extra_args: {enable_prefix_caching: false}")
        self.profile.write_text(text)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start_broker(self) -> None:
        self._spawn("broker", [TSSLURM, "broker", "-p", str(self.profile),
                               "--state-dir", str(self.state)], dict(os.environ), None)
        self.wait(lambda: (self.state / "connection.json").exists(), 30, "the connection file")

    def start_worker(self, name: str, role: str, cpu: int) -> None:
        env = {**os.environ, "TSSLURM_ROLE": role, "TSSLURM_PROFILE": str(self.profile),
               "TSSLURM_STATE_DIR": str(self.state), "TSSLURM_WORKER_ID": name}
        env.pop("SLURM_JOB_ID", None)
        self._spawn(name, [sys.executable, "-m", "tsslurm.launcher"], env, cpu)

    def wait_ready(self, name: str, timeout_s: float = 300.0) -> None:
        self.wait(lambda: f"worker {name} ready" in self.log("broker"), timeout_s,
                  f"worker {name} to be ready", name)

    def records(self, count: int) -> dict[str, RequestRecord]:
        database = StateDir.open(self.state).database
        found: list[RequestRecord] = []

        def enough() -> bool:
            nonlocal found
            found = read_requests(database)
            return len(found) >= count

        self.wait(enough, 15, f"{count} request records")
        return {record.request_id: record for record in found}

    def last_change(self, worker: str) -> str:
        """The broker's latest word on a worker: ready, disconnected, lost, draining."""
        changes = re.findall(rf"worker {worker} (\w+)", self.log("broker"))
        return changes[-1] if changes else ""

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> list[int]:
        """SIGKILL a launcher; the pids of the engine processes it had started."""
        process = self.processes[name]
        children = [child.pid for child in psutil.Process(process.pid).children()
                    if "EngineCore" in child.name()]
        process.kill()
        process.wait(60)  # the kernel's teardown of a killed launcher took > 10 s once in CI
        return children

    def stop(self, name: str, timeout_s: float = 60.0) -> int:
        self.processes[name].send_signal(signal.SIGTERM)
        return self.processes[name].wait(timeout_s)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(30)

    def wait(self, done: Callable[[], bool], timeout_s: float, what: str,
             name: str = "broker") -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited ({process.returncode}) while waiting for "
                                     f"{what}:\n{self.log(name)[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log(name)[-4000:]}")
            time.sleep(0.1)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cpu: int | None) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                    env=env, cwd=self.root)
        if cpu is not None:
            os.sched_setaffinity(self.processes[name].pid, {cpu})


@pytest.fixture
def deployment(tmp_path: Path, tiny_model: Path) -> Iterator[Deployment]:
    made = Deployment(tmp_path, tiny_model)
    try:
        yield made
    finally:
        made.close()


def pulled_tokens(decoder_log: str) -> int:
    found = re.search(r"(\d+) pulled through the KV connector", decoder_log)
    assert found, f"the decoder logged no totals:\n{decoder_log[-3000:]}"
    return int(found.group(1))


@pytest.mark.timeout(720)
def test_broker_and_launchers_serve_vllm_disaggregated_and_converted(
        deployment: Deployment, tiny_model: Path) -> None:
    plain = PlainReference(tiny_model, PROMPTS, MAX_TOKENS, deployment.root)
    cpus = sorted(os.sched_getaffinity(0))
    deployment.start_broker()
    deployment.start_worker("p1", "prefill", cpus[0])
    deployment.start_worker("c1", "convertible", cpus[-1])
    deployment.wait_ready("p1")
    deployment.wait_ready("c1")
    reference = plain.outputs()

    client = Client(state_dir=deployment.state, timeout_s=120)
    try:
        handed_off = [client.generate(p, MAX_TOKENS, request_id=f"kv{i}").token_ids
                      for i, p in enumerate(PROMPTS)]
        engine_cores = deployment.kill("p1")
        assert engine_cores, "the prefiller ran its engine in a child process"
        deployment.wait(lambda: not any(psutil.pid_exists(pid) for pid in engine_cores), 20,
                        "the killed prefiller's engine process to be stopped by its watchdog")
        deployment.wait(lambda: deployment.last_change("p1") == "lost", 30,
                        "the broker to drop the killed prefiller")
        converted = [client.generate(p, MAX_TOKENS, request_id=f"full{i}").token_ids
                     for i, p in enumerate(PROMPTS)]
    finally:
        client.close()

    assert handed_off == reference
    assert converted == reference
    records = deployment.records(2 * len(PROMPTS))
    for i in range(len(PROMPTS)):
        assert (records[f"kv{i}"].path, records[f"kv{i}"].workers) == ("disaggregated", "p1,c1")
        assert records[f"full{i}"].path in ("converted", "plain")
        assert records[f"full{i}"].workers == "c1"
    assert deployment.stop("c1") == 0
    assert pulled_tokens(deployment.log("c1")) == sum(len(p) for p in PROMPTS), \
        "phase 1's prompt KV came through the transfer; phase 2 pulled none"

