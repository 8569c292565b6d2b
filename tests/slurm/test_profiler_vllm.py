"""The profiler for real: `tsslurm profile --quick` measures the tiny model with real vLLM in a
Slurm job submitted through submitit (dev cluster, slurmdbd on), writes a profile that loads, and
its figures hold when the same engine is driven by the broker: a broker and a convertible-decoder
launcher (pinned to one core, as each engine of the job is) serve concurrent requests sent through
the client library. Broker-driven / profiled, median of the rounds compared:

  - decode step of 16 concurrent 100-token prompts (64 tokens out) against the profiled step
    model for that batch and context: within [0.5, 1.4];
  - V_D of the grid's cell (row 0, column 1) at the batch the profiler measured it at (128 x 129
    tokens in, 80 out): within [0.6, 1.4];
  - prefill tokens/s of 16 concurrent 1000-token prompts against V_P: within [0.5, 1.3].

Why these bounds. The broker path costs what the profile's in-process probes do not: the launcher
encodes and sends every token on the engine's own core, and each prefill crosses the broker (a
convertible takes prompts only up to its prefill cap, so 1000-token prompts go one at a time). That
cost weighs most where steps are shortest. Medians measured in five runs on this machine:
0.63-1.19 for the 16-request decode step, 0.84-1.04 for V_D at 128 requests, 0.73-1.08 for
prefill (single rounds: docs/profiler.md). The rest is the machine:
the two measurements run minutes apart on 2 cores shared with other work. A round counts only when
the serving engine was held back by other work about as much as the profiled one was (CPU wait of
its busiest thread within CPU_WAIT_BAND; tsslurm.profiler.contention), so a load that came or went
in between cannot decide the outcome; the errors the check exists for are larger than the bounds
(V_D counted in output tokens only: 2.6x for this cell; a step model in the wrong unit: 1000x).

The `--local` variant runs the same job function in a subprocess here."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from profiler_helpers import run_profile, tiny_profile_file
from slurm_helpers import partition, shell_job

from tsslurm.client import AsyncClient
from tsslurm.models.tiny import build_tiny_model
from tsslurm.perfmodel import decode_step_seconds
from tsslurm.profile import Profile, load_profile
from tsslurm.profile.schema import Velocities
from tsslurm.profiler.analysis import decode_velocity
from tsslurm.profiler.contention import ContentionWindow
from tsslurm.profiler.fit import lockstep_sample
from tsslurm.profiler.kvsize import kv_bytes_per_token
from tsslurm.protocol import Sampling

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

TSSLURM = str(Path(sys.executable).parent / "tsslurm")
TOLERANCE = {"decode_step": (0.5, 1.4), "v_d": (0.6, 1.4), "prefill": (0.5, 1.3)}
"""Broker-driven / profiled, median of the rounds compared (why these bounds: the docstring)."""
ROUNDS = 5
"""Rounds compared: the median of five outvotes two rounds that met a passing burst of load."""
ROUNDS_BUDGET_S = 120.0
CPU_WAIT_BAND = 0.15
"""A round is compared with the profile when the serving engine's busiest thread waited for a
CPU a share of the round within 0.15 of the profiled engine's (tsslurm.profiler.contention):
other work that came or went between the two would otherwise decide the outcome."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


class Served:
    """`tsslurm broker` and one convertible-decoder launcher serving a profile."""

    def __init__(self, root: Path, profile: Path) -> None:
        self.root, self.state = root, root / "served"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._spawn("broker", [TSSLURM, "broker", "-p", str(profile), "--state-dir",
                               str(self.state)], {})
        self._until(lambda: (self.state / "connection.json").exists(), 30, "broker")
        env = {"TSSLURM_ROLE": "convertible", "TSSLURM_PROFILE": str(profile),
               "TSSLURM_STATE_DIR": str(self.state), "TSSLURM_WORKER_ID": "c1"}
        launcher = self._spawn("c1", [sys.executable, "-m", "tsslurm.launcher"], env)
        os.sched_setaffinity(launcher.pid, {max(os.sched_getaffinity(0))})
        self._until(lambda: "worker c1 ready" in self.log("broker"), 240, "c1")

    def launcher_pids(self) -> list[int]:
        """The launcher and its engine process (and the engine's watchdog)."""
        launcher = psutil.Process(self.processes[1].pid)
        return [launcher.pid, *(child.pid for child in launcher.children(recursive=True))]

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")}
        with open(self.root / f"{name}.log", "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       env={**clean, **env}, cwd=self.root)
        self.processes.append(process)
        return process

    def _until(self, done, timeout_s: float, name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if any(p.poll() is not None for p in self.processes):
                raise AssertionError(f"a process exited while waiting for {name}:\n"
                                     f"{self.log('broker')[-3000:]}\n{self.log('c1')[-3000:]}")
            assert time.monotonic() < deadline, f"{name} not ready:\n{self.log(name)[-3000:]}"
            time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    holder: list[Served] = []
    yield holder
    for deployment in holder:
        deployment.close()


def submit_quick_jobs(slurm, tmp_path: Path, count: int) -> None:
    """A few finished jobs on a100, so the history holds enough even on a fresh cluster."""
    for i in range(count):
        slurm.adapter.submit_job(shell_job(slurm.name(f"history{i}"), partition("a100"),
                                           tmp_path, "exit 0"))


def test_profile_through_submitit_then_drive_the_engine_through_the_broker(
        slurm, tmp_path: Path, tiny_model: Path, served: list[Served]) -> None:
    submit_quick_jobs(slurm, tmp_path, 5)
    source = tiny_profile_file(tmp_path, tiny_model)
    out = tmp_path / "profiled.yaml"
    done = run_profile(slurm.conf, source, "--partition", "a100", "--quick", "--out", str(out),
                       "--job-name", slurm.name("profile"))
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"written to {out}" in done.stdout
    profile = load_profile(out)
    check_written_profile(profile, out, source, tiny_model, slurm)
    velocities = profile.partition("a100").velocities
    assert velocities is not None
    served.append(Served(tmp_path, out))
    profiled = profiled_cpu_wait(velocities)
    rounds = asyncio.run(drive(served[0], profile, profiled))
    print(f"profiled V_P {velocities.prefill_tokens_per_s:,.0f} tokens/s, step "
          f"{velocities.decode_step}, V_D(0,1) {velocities.decode_tokens_per_s[0][1]:,.0f} at "
          f"{profiled_cell(velocities, 0, 1)}, engine CPU wait {profiled}; broker-driven / "
          f"profiled: " + "; ".join(f"{name} {[round(getattr(r, name) or 0, 2) for r in rounds]}"
                                    for name in Checked._fields))
    compared = [r for r in rounds if r.comparable(profiled)]
    assert compared, f"no round held the engine back within {CPU_WAIT_BAND} of the profile's " \
                     f"CPU wait ({profiled}): the machine's load changed too much: {rounds}"
    for name, (low, high) in TOLERANCE.items():
        median = statistics.median(getattr(r, name) for r in compared)
        assert low <= median <= high, (name, profiled, rounds)


def profiled_cpu_wait(velocities: Velocities) -> float | None:
    text = velocities.measured["engine_cpu_wait"]
    return None if text.startswith("not available") else float(text.split("%")[0]) / 100


def check_written_profile(profile: Profile, out: Path, source: Path, model: Path, slurm) -> None:
    part = profile.partition("a100")
    v = part.velocities
    assert v is not None
    measured = v.measured
    a100_nodes = {n for p in slurm.adapter.partitions() if p.name == "a100" for n in p.nodes}
    assert measured["partition"] == "a100" and measured["node"] in a100_nodes
    assert measured["job"].isdigit() and measured["engine"].startswith("vllm 0.32.0")
    assert datetime.now(UTC) - datetime.fromisoformat(measured["date"]) \
        < timedelta(minutes=10)
    config = json.loads((model / "config.json").read_text())
    assert v.kv_bytes_per_token == kv_bytes_per_token(config, 4), "float32 KV, from the config"
    cache_bytes = profile.engine.kv_cache_bytes
    assert cache_bytes is not None
    assert 0 <= cache_bytes - v.kv_capacity_tokens * v.kv_bytes_per_token \
        < 128 * v.kv_bytes_per_token, "capacity: the engine's KV bytes, in whole blocks"
    assert 0 < part.model_load_s < 180
    assert measured["queue_wait"].startswith("sacct, partition a100"), measured["queue_wait"]
    assert part.queue_wait.mean_s < 30, "the dev cluster starts jobs within seconds"
    assert all(value > 0 for row in v.decode_tokens_per_s for value in row)
    ratios = [float(r) for r in measured["v_d_over_step_model"].split(":")[-1].split()]
    assert len(ratios) == 9 and all(0.5 < r < 2 for r in ratios), ratios
    kept = [line for line in source.read_text().splitlines() if line.startswith("#")]
    assert kept and all(line in out.read_text() for line in kept), "header comments survive"


class Checked(NamedTuple):
    """One round through the broker, each as broker-driven / profiled."""

    decode_step: float
    """The step model's time for a 16-request batch over the step measured (>1: faster)."""
    v_d: float
    """V_D of the profiled cell (row 0, column 1) at its batch, over the profile's grid value."""
    prefill: float
    """Prefill tokens/s of 16 concurrent 1000-token prompts over V_P."""
    cpu_wait: float | None
    """The serving engine's busiest thread's share of the round spent waiting for a CPU."""

    def comparable(self, profiled: float | None) -> bool:
        """Ran with its engine held back about as much as the profiled one was (or unknown)."""
        return profiled is None or self.cpu_wait is None or \
            abs(self.cpu_wait - profiled) <= CPU_WAIT_BAND


def profiled_cell(velocities: Velocities, row: int, column: int) -> tuple[int, int, int]:
    """(input tokens, output tokens, batch) the profiler measured a V_D cell at."""
    entries = velocities.measured["v_d_cells"].split(": ", 1)[1].split(", ")
    columns = len(velocities.decode_tokens_per_s[0])
    found = re.fullmatch(r"(\d+)x(\d+) -> (\d+) \w+", entries[row * columns + column])
    assert found, velocities.measured["v_d_cells"]
    return int(found[1]), int(found[2]), int(found[3])


async def drive(served: Served, profile: Profile, profiled: float | None) -> list[Checked]:
    """Rounds of the engine driven through the broker, compared with the profile: ROUNDS of
    them, more (within ROUNDS_BUDGET_S) while fewer than ROUNDS held the engine back about as
    much as the profile's measuring time did."""
    v = profile.partition("a100").velocities
    assert v is not None
    rng = random.Random(5)
    rounds: list[Checked] = []
    deadline = time.monotonic() + ROUNDS_BUDGET_S
    async with AsyncClient(state_dir=served.state, timeout_s=120) as client:
        await client.generate(prompt(rng, 50), 4)
        while len(rounds) < ROUNDS or (sum(r.comparable(profiled) for r in rounds) < ROUNDS
                                       and time.monotonic() < deadline):
            window = ContentionWindow(served.launcher_pids())
            step, cell, prefill = (await decode_step_ratio(client, rng, v),
                                   await cell_ratio(client, rng, v),
                                   await prefill_ratio(client, rng, v))
            rounds.append(Checked(step, cell, prefill, window.share()))
    return rounds


async def decode_step_ratio(client: AsyncClient, rng: random.Random, v: Velocities) -> float:
    batch, length, output = 16, 100, 64
    streams = await asyncio.gather(*(stream(client, prompt(rng, length), output)
                                     for _ in range(batch)))
    sample = lockstep_sample(streams, length, output)
    return decode_step_seconds(batch, sample.context_tokens, v.decode_step) / sample.step_s


async def cell_ratio(client: AsyncClient, rng: random.Random, v: Velocities) -> float:
    """Row 0's cell: its short prompts all fit the convertible's prefill cap within a few
    rounds, so the whole batch decodes together well before the first request ends."""
    length, output, batch = profiled_cell(v, 0, 1)
    streams = await asyncio.gather(*(stream(client, prompt(rng, length), output)
                                     for _ in range(batch)))
    sample = lockstep_sample(streams, length, output)
    return decode_velocity(sample, sample.step_s) / v.decode_tokens_per_s[0][1]


async def prefill_ratio(client: AsyncClient, rng: random.Random, v: Velocities) -> float:
    prompts = [prompt(rng, 1000) for _ in range(16)]
    began = time.perf_counter()
    await asyncio.gather(*(client.generate(p, 1) for p in prompts))
    return 16 * 1000 / (time.perf_counter() - began) / v.prefill_tokens_per_s


def prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(128, 1024) for _ in range(length)]


async def stream(client: AsyncClient, tokens: list[int], output: int) -> list[tuple[float, int]]:
    stamps = []
    async for chunk in client.stream(tokens, output, Sampling(ignore_eos=True)):
        stamps.append((time.perf_counter(), len(chunk.token_ids)))
    return stamps


@pytest.mark.timeout(120)
def test_local_profile_reports_an_engine_that_cannot_start(tmp_path: Path) -> None:
    profile = tiny_profile_file(tmp_path, tmp_path / "no-model-here")
    done = subprocess.run([TSSLURM, "profile", "-p", str(profile), "--local", "--quick"],
                          capture_output=True, text=True, check=False, timeout=110)
    assert done.returncode == 1
    assert "the profiling job" in done.stderr and "failed while starting the first engine" \
        in done.stderr
    assert "config.json is missing" in done.stderr and "Traceback" not in done.stderr
