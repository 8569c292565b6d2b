"""Helpers of benchmarks/broker.py: the benchmark's mock profile, the trace, prompts, and a
broker with mock workers as local processes (with their CPU time)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tsslurm.perfmodel import roofline_decode_grid
from tsslurm.profile.schema import DecodeStep, LengthBuckets

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
TSSLURM = str(Path(sys.executable).parent / "tsslurm")
STEP = DecodeStep(base_ms=0.5, per_sequence_ms=0.0, per_context_token_us=0.0)
BUCKETS = LengthBuckets(input_edges=[1024, 4096], output_edges=[128, 512])


def profile_yaml() -> str:
    grid = roofline_decode_grid(STEP, 50_000_000, BUCKETS, 0.1)
    return f"""deployment: bench-mock
model: {{name: mock-llama, path: "mock://none", max_context_tokens: 16384}}
engine: {{kind: mock, convertible_prefill_cap_tokens: 1000000, max_num_batched_tokens: 1000000}}
partitions:
  - name: a100
    gres: gpu:a100
    template: a100.sbatch
    velocities:
      prefill_tokens_per_s: 1.0e+12
      kv_transfer_tokens_per_s: 1.0e+12
      kv_bytes_per_token: 131072
      kv_capacity_tokens: 50000000
      decode_step: {{base_ms: {STEP.base_ms}, per_sequence_ms: 0.0, per_context_token_us: 0.0}}
      decode_tokens_per_s: {json.dumps(grid)}
buckets: {{input_edges: {BUCKETS.input_edges}, output_edges: {BUCKETS.output_edges}}}
broker: {{host: 127.0.0.1, heartbeat_s: 1.0, liveness: 10, request_timeout_s: 600}}
"""


def load_trace(path: Path) -> list[tuple[int, int]]:
    with path.open() as handle:
        return [(int(row["ContextTokens"]), int(row["GeneratedTokens"]))
                for row in csv.DictReader(handle)]


class Prompts:
    """Prompt token lists of any length, cut from one seeded random sequence."""

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        self._tokens = [rng.randrange(32, 127) for _ in range(40_000)]

    def of(self, length: int, index: int) -> list[int]:
        start = (index * 7919) % (len(self._tokens) - length - 1)
        return self._tokens[start:start + length]


# ---- processes --------------------------------------------------------------------------------

class Processes:
    def __init__(self, root: Path):
        self.root = root
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.log", "wb") as log:
            self.children[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                   env=env)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            if time.monotonic() > deadline or self.children[name].poll() is not None:
                raise RuntimeError(f"{name} did not log {text!r}:\n{self.log(name)[-2000:]}")
            time.sleep(0.02)

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU time of each child so far (Linux /proc)."""
        return {name: _cpu_seconds(process.pid) for name, process in self.children.items()
                if process.poll() is None}

    def stop(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.children.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_env(profile: Path, state: Path, name: str, role: str) -> dict[str, str]:
    return {**os.environ, "TSSLURM_PROFILE": str(profile), "TSSLURM_STATE_DIR": str(state),
            "TSSLURM_ROLE": role, "TSSLURM_WORKER_ID": name, "TSSLURM_LOG_LEVEL": "WARNING"}


@contextmanager
def deployment(root: Path, workers: list[tuple[str, str]]) -> Iterator[tuple[Path, Processes]]:
    """A broker and mock workers; yields (state dir, processes); the broker's summary is logged
    at exit (messages received and sent)."""
    root.mkdir(parents=True)
    profile, state = root / "profile.yaml", root / "state"
    profile.write_text(profile_yaml())
    processes = Processes(root)
    try:
        processes.spawn("broker", [TSSLURM, "broker", "-p", str(profile), "--state-dir", str(state),
                                   "--log-level", "INFO"], dict(os.environ))
        processes.wait_for("broker", "broker bench-mock")
        for name, role in workers:
            processes.spawn(name, [sys.executable, "-m", "tsslurm.launcher"],
                            worker_env(profile, state, name, role))
            processes.wait_for("broker", f"worker {name} ready")
        yield state, processes
    finally:
        processes.stop()


def broker_summary(processes: Processes) -> dict[str, object]:
    line = [l for l in processes.log("broker").splitlines() if "broker stopping:" in l][-1]
    return json.loads(line.split("broker stopping:", 1)[1])
