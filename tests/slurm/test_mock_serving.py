"""Mock workers as real Slurm jobs: rendered from the partition's sbatch template, submitted and
cancelled through the Slurm adapter, registered with a local broker (READY carries the Slurm job
id). A decoder job cancelled with scancel mid-stream loses no request: every answer is exactly
what an uninterrupted run gives, and the broker's store knows which jobs are still serving."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tsslurm.broker.store import read_jobs, read_requests
from tsslurm.client import AsyncClient
from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.profile import load_profile
from tsslurm.profile.load import PROFILE_DIR
from tsslurm.slurm.render import JobSpec
from tsslurm.statedir import StateDir

pytestmark = pytest.mark.timeout(180)

TSSLURM = str(Path(sys.executable).parent / "tsslurm")


class LocalBroker:
    def __init__(self, root: Path):
        self.root = root
        self.state = root / "state"
        self.profile = root / "local-mock.yaml"
        self.profile.write_text((PROFILE_DIR / "local-mock.yaml").read_text()
                                .replace("mem: 1G", "mem: 200M"))
        self.log_file = root / "broker.log"
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [TSSLURM, "broker", "-p", str(self.profile), "--state-dir", str(self.state)],
                stdout=log, stderr=subprocess.STDOUT)
        self.wait(lambda: (self.state / "connection.json").exists(), "the connection file")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait(self, done: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    made = LocalBroker(tmp_path)
    try:
        yield made
    finally:
        made.close()


def submit_worker(slurm, broker: LocalBroker, name: str, role: str, logs: Path) -> str:
    profile = load_profile(broker.profile)
    spec = JobSpec(name=slurm.name(name), partition=profile.partition("a100"), log_dir=str(logs),
                   env={"TSSLURM_ROLE": role, "TSSLURM_PROFILE": str(broker.profile),
                        "TSSLURM_STATE_DIR": str(broker.state), "TSSLURM_PARTITION": "a100"})
    return slurm.adapter.submit_job(spec)


def test_scancel_of_a_decoder_job_mid_stream_loses_no_request(slurm, broker, tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    jobs = {name: submit_worker(slurm, broker, name, role, logs)
            for name, role in (("p", "prefill"), ("d1", "decode"), ("d2", "decode"))}
    ids = {"p": f"prefiller-{jobs['p']}", "d1": f"decoder-{jobs['d1']}",
           "d2": f"decoder-{jobs['d2']}"}
    for worker_id in ids.values():
        broker.wait(lambda w=worker_id: f"worker {w} ready" in broker.log(), f"{worker_id} ready",
                    timeout_s=90)

    rng = random.Random(8)
    work = [([rng.randrange(32, 127) for _ in range(rng.randrange(10, 200))], 150)
            for _ in range(30)]

    async def serve() -> list:
        client = AsyncClient(state_dir=broker.state, timeout_s=90)
        calls = [asyncio.create_task(client.generate(p, n, request_id=f"job-{i}"))
                 for i, (p, n) in enumerate(work)]
        while len(client.calls) < len(work) or \
                min(len(c.tokens) for c in client.calls.values()) < 10:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(slurm.adapter.cancel, [jobs["d1"]])
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(serve())
    for (prompt, max_tokens), result in zip(work, results):
        assert result.token_ids == mock_continuation(prompt, max_tokens)
    database = StateDir.open(broker.state).database
    broker.wait(lambda: len(read_requests(database)) >= len(work), "the request records")
    moved = [r for r in read_requests(database) if r.workers.split(",")[1] == ids["d1"]]
    assert moved and all(r.workers.split(",")[-1] == ids["d2"] for r in moved)
    broker.wait(lambda: f"worker {ids['d1']} disconnected" in broker.log()
                or f"worker {ids['d1']} lost" in broker.log(), "d1 to leave")
    states = {job.job_id: job.state for job in read_jobs(database)}
    assert states == {jobs["p"]: "ready", jobs["d1"]: "ended", jobs["d2"]: "ready"}
    assert {job.role for job in read_jobs(database)} == {"prefill", "decode"}
