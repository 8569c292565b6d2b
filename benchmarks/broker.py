"""Benchmark of the broker's data path: one `tsslurm broker` process, mock workers
(`python -m tsslurm.launcher`) and an asyncio client, all on loopback with CURVE, next to the raw
ZeroMQ round trip measured in the same run (the physical limit).

    .venv/bin/python benchmarks/broker.py [--seconds 10] [--trace PATH]

Workload: the Azure conversation trace's input and output lengths (../shared/traces). Phases:
1. raw ZeroMQ: DEALER <-> ROUTER echo between two processes over CURVE: round trips/s one at a
   time and pipelined (64 in flight), and the one-at-a-time latency.
2. requests/s routed: trace input lengths, 1 output token, closed loop; every request takes the
   disaggregated path (client -> broker -> prefiller -> broker -> decoder -> broker -> client).
3. streamed tokens/s: trace input and output lengths, closed loop, one stream message per mock
   decode iteration; tokens and messages counted at the client.
4. added latency at a fixed offered load of 500 requests/s (Poisson arrivals, 1 output token):
   end-to-end latency through the broker (client -> broker -> decoder -> broker -> client) minus
   the same work sent to the same kind of worker directly (this script playing the broker), the
   two paths loaded in alternating 1 s windows so both meet the same moments of a busy machine;
   repeated (--latency-runs), the median run reported next to every run's figure.
The mock engines run with near-zero model time (broker_deployment.py), so the figures are the
serving path's own cost. Prints a table (and the figures as JSON with --json); docs/benchmarks.md
shows runs."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio
from broker_deployment import (
    TRACE,
    Processes,
    Prompts,
    broker_summary,
    deployment,
    load_trace,
    profile_yaml,
    worker_env,
)

from tsslurm.client import AsyncClient
from tsslurm.protocol import (
    PROTOCOL_VERSION,
    BrokerBeat,
    Command,
    OutputBatch,
    WorkBatch,
    WorkItem,
    decode,
    encode,
)
from tsslurm.statedir import Connection, StateDir

# ---- phase 1: raw ZeroMQ ------------------------------------------------------------------------

ECHO = """
import sys, zmq
context = zmq.Context()
server = context.socket(zmq.ROUTER)
server.curve_secretkey, server.curve_publickey = sys.argv[1].encode(), sys.argv[2].encode()
server.curve_server = True
port = server.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    server.send_multipart(server.recv_multipart())
"""


def raw_zeromq(seconds: float) -> dict[str, float]:
    public, secret = zmq.curve_keypair()
    echo = subprocess.Popen([sys.executable, "-c", ECHO, secret.decode(), public.decode()],
                            stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        context = zmq.Context()
        client = context.socket(zmq.DEALER)
        client.curve_serverkey = public
        client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
        client.connect(f"tcp://127.0.0.1:{port}")
        frames = [b"TSS/1", b"\x01", b"x" * 200]
        client.send_multipart(frames)
        client.recv_multipart()
        latencies = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            began = time.perf_counter()
            client.send_multipart(frames)
            client.recv_multipart()
            latencies.append(time.perf_counter() - began)
        sequential_rate = len(latencies) / sum(latencies)
        window, done, sent = 64, 0, 0
        began = time.perf_counter()
        end = began + seconds / 2
        while time.perf_counter() < end:
            while sent - done < window:
                client.send_multipart(frames)
                sent += 1
            client.recv_multipart()
            done += 1
        pipelined_rate = done / (time.perf_counter() - began)
        context.destroy(linger=0)
        return {"round_trips_per_s": sequential_rate, "pipelined_round_trips_per_s": pipelined_rate,
                "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3}
    finally:
        echo.kill()
        echo.wait()


# ---- phases 2 and 3: closed loop through the broker ---------------------------------------------

async def closed_loop(state: Path, jobs: list[tuple[list[int], int]], concurrency: int,
                      seconds: float) -> dict[str, float]:
    client = AsyncClient(state_dir=state, timeout_s=600)
    counts = {"requests": 0, "tokens": 0, "messages": 0}
    stop_at = time.perf_counter() + seconds
    next_job = iter(range(10**9))

    async def lane() -> None:
        while time.perf_counter() < stop_at:
            prompt, max_tokens = jobs[next(next_job) % len(jobs)]
            result = await client.generate(prompt, max_tokens)
            assert result.completion_tokens == max_tokens, result
            counts["requests"] += 1
            counts["tokens"] += len(result.token_ids)
            counts["messages"] += result.stream_messages

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    counts["client_messages"] = client.received
    await client.close()
    return {key: value / elapsed for key, value in counts.items()} | {"seconds": elapsed}


# ---- phase 4: latency at a fixed offered load ---------------------------------------------------

class BrokerPath:
    """Requests through the broker: client -> broker -> decoder -> broker -> client."""

    def __init__(self, state: Path):
        self.client = AsyncClient(state_dir=state, timeout_s=60)
        self.pending: set[asyncio.Task[None]] = set()

    def submit(self, prompt: list[int], done: Callable[[float], None]) -> None:
        async def one() -> None:
            done((await self.client.generate(prompt, 1)).latency_s)

        task = asyncio.create_task(one())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def finish(self) -> None:
        await asyncio.gather(*self.pending)
        await self.client.close()


class DirectPath:
    """The same work sent straight to a mock decoder, this script playing the broker."""

    def __init__(self, root: Path):
        root.mkdir(parents=True)
        self.profile = root / "profile.yaml"
        self.profile.write_text(profile_yaml())
        self.state = StateDir.create(root / "state")
        self.processes = Processes(root)
        self.context = zmq.asyncio.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.sent: dict[str, tuple[float, Callable[[float], None]]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.identity = b""
        self.count = 0

    async def start(self) -> None:
        keys = self.state.server_keys()
        self.router.curve_secretkey, self.router.curve_publickey = keys.secret, keys.public
        self.router.curve_server = True
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.state.write_connection(Connection(
            deployment="direct", host="127.0.0.1", client_port=0, worker_port=port,
            server_public_key=keys.public.decode(), protocol_version=PROTOCOL_VERSION,
            broker_pid=os.getpid(), started_at=time.time(), model="mock-llama"))
        self.processes.spawn("d1", [sys.executable, "-m", "tsslurm.launcher"],
                             worker_env(self.profile, self.state.root, "d1", "decode"))
        while True:
            frames = await asyncio.wait_for(self.router.recv_multipart(), 30)
            if frames[2] == Command.READY.value:
                self.identity = frames[0]
                break
        self.tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._read())]

    def submit(self, prompt: list[int], done: Callable[[float], None]) -> None:
        self.count += 1
        request_id = f"direct-{self.count}"
        item = WorkItem(request_id=request_id, mode="full", prompt_token_ids=prompt, max_tokens=1)
        self.sent[request_id] = (time.perf_counter(), done)
        self.router.send_multipart([self.identity, *encode(Command.WORK, WorkBatch([item]))])

    async def finish(self) -> None:
        while self.sent:
            await asyncio.sleep(0.05)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.processes.stop()
        self.router.close(linger=0)
        self.context.term()

    async def _beat(self) -> None:
        while True:
            await self.router.send_multipart([self.identity,
                                              *encode(Command.HEARTBEAT, BrokerBeat())])
            await asyncio.sleep(0.5)

    async def _read(self) -> None:
        while True:
            frames = await self.router.recv_multipart()
            if frames[2] != Command.OUTPUT.value:
                continue
            now = time.perf_counter()
            _, batch = decode(frames[1:], from_worker=True)
            assert isinstance(batch, OutputBatch)
            for item in batch.items:
                if item.finish_reason is not None:
                    began, done = self.sent.pop(item.request_id)
                    done(now - began)


async def interleaved_load(paths: dict[str, BrokerPath | DirectPath], prompts: list[list[int]],
                           rate: float, seconds: float, window_s: float = 1.0
                           ) -> dict[str, list[float]]:
    """Poisson arrivals at `rate`, to each path in turn for `window_s`, `seconds` per path in
    all: both paths see the same moments of a busy machine."""
    rng = random.Random(11)
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    index = 0
    for _ in range(max(1, round(seconds / window_s))):
        for name, path in paths.items():
            due = time.perf_counter()
            end = due + window_s
            while (due := due + rng.expovariate(rate)) < end:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                path.submit(prompts[index % len(prompts)], latencies[name].append)
                index += 1
    for path in paths.values():
        await path.finish()
    return latencies


async def _latency_run(state: Path, direct_root: Path, prompts: list[list[int]],
                       args: argparse.Namespace) -> dict[str, list[float]]:
    direct = DirectPath(direct_root)
    await direct.start()
    paths: dict[str, BrokerPath | DirectPath] = {"through": BrokerPath(state), "direct": direct}
    return await interleaved_load(paths, prompts, args.rate, args.seconds)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---- main ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    trace = load_trace(args.trace)
    random.Random(3).shuffle(trace)
    prompts = Prompts()
    routing_jobs = [(prompts.of(i, n), 1) for n, (i, _) in enumerate(trace[:5000])]
    token_jobs = [(prompts.of(i, n), o) for n, (i, o) in enumerate(trace[:5000])]
    figures: dict[str, dict[str, float]] = {"machine": {"load_at_start": os.getloadavg()[0],
                                                        "cores": float(os.cpu_count() or 0)}}
    gc.freeze()  # the harness's own start-up garbage stays out of its measurements
    if "raw" in args.phases:
        figures["raw_zeromq"] = raw_zeromq(args.seconds / 2)
    with tempfile.TemporaryDirectory(prefix="tsslurm-bench-") as tmp:
        root = Path(tmp)
        for phase, jobs in (("requests", routing_jobs), ("tokens", token_jobs)):
            if phase in args.phases:
                figures[phase] = closed_loop_phase(root / phase, jobs, args)
        if "latency" in args.phases:
            figures["latency"] = latency_phase(root, [p for p, _ in routing_jobs], args)
    figures["machine"]["load_at_end"] = os.getloadavg()[0]
    return figures


def closed_loop_phase(root: Path, jobs: list[tuple[list[int], int]],
                      args: argparse.Namespace) -> dict[str, float]:
    workers = [("p1", "prefill"), ("d1", "decode"), ("d2", "decode")]
    with deployment(root, workers) as (state, processes):
        before = processes.cpu_seconds() | {"client": time.process_time()}
        figures = asyncio.run(closed_loop(state, jobs, args.concurrency, args.seconds))
        after = processes.cpu_seconds() | {"client": time.process_time()}
    seconds = figures["seconds"]
    figures |= _broker_rates(processes, seconds)
    return figures | {f"cpu_{name}": (after[name] - before[name]) / seconds for name in after}


def latency_phase(root: Path, prompts: list[list[int]], args: argparse.Namespace
                  ) -> dict[str, float]:
    """`--latency-runs` runs, each alternating 1 s windows between the two paths; the median run
    reported next to every run's added p99."""
    runs = []
    for index in range(args.latency_runs):
        with deployment(root / f"latency{index}", [("d1", "decode")]) as (state, _):
            measured = asyncio.run(_latency_run(state, root / f"direct{index}", prompts, args))
        run = {f"{path}_p{q}_ms": percentile(measured[name], q) * 1e3
               for name, path in (("through", "through_broker"), ("direct", "direct"))
               for q in (50, 99)}
        run["added_p50_ms"] = run["through_broker_p50_ms"] - run["direct_p50_ms"]
        run["added_p99_ms"] = run["through_broker_p99_ms"] - run["direct_p99_ms"]
        run["requests"] = float(len(measured["through"]) + len(measured["direct"]))
        runs.append(run)
    runs.sort(key=lambda run: run["added_p99_ms"])
    median = dict(runs[len(runs) // 2])
    median |= {f"run{i}_added_p99_ms": run["added_p99_ms"] for i, run in enumerate(runs)}
    return median | {"offered_per_s": args.rate, "runs": float(len(runs))}


def _broker_rates(processes: Processes, seconds: float) -> dict[str, float]:
    summary = broker_summary(processes)
    return {"broker_messages_per_s": (int(summary["messages_received"])  # type: ignore[arg-type]
                                      + int(summary["messages_sent"])) / seconds}  # type: ignore[arg-type]


def report(figures: dict[str, dict[str, float]]) -> str:
    raw, req, tok, lat = (figures[k] for k in ("raw_zeromq", "requests", "tokens", "latency"))
    machine = figures["machine"]
    added_runs = " ".join(f"{lat[f'run{i}_added_p99_ms']:.2f}" for i in range(int(lat["runs"])))
    rows = [
        ("raw ZeroMQ round trips/s (1 in flight / 64 in flight)",
         f"{raw['round_trips_per_s']:,.0f} / {raw['pipelined_round_trips_per_s']:,.0f}"),
        ("raw ZeroMQ round trip p50 / p99", f"{raw['p50_ms']:.3f} / {raw['p99_ms']:.3f} ms"),
        ("requests/s routed (prefill -> decode, 1 token)", f"{req['requests']:,.0f}"),
        ("  broker messages/s in that phase", f"{req['broker_messages_per_s']:,.0f}"),
        ("streamed tokens/s (trace lengths)", f"{tok['tokens']:,.0f}"),
        ("  stream deltas/s at the client (one per request per iteration)",
         f"{tok['messages']:,.0f}"),
        ("  messages/s the client received (one STREAM per decode iteration)",
         f"{tok['client_messages']:,.0f}"),
        ("  broker messages/s in that phase", f"{tok['broker_messages_per_s']:,.0f}"),
        ("  requests/s in that phase", f"{tok['requests']:,.1f}"),
        ("broker CPU (share of one core): requests / tokens phase",
         f"{req['cpu_broker']:.0%} / {tok['cpu_broker']:.0%}"),
        ("CPU of the rest: client, prefiller, decoders (requests / tokens phase)",
         _cpu_shares(req) + " / " + _cpu_shares(tok)),
        (f"latency at {lat['offered_per_s']:.0f} req/s through the broker p50 / p99",
         f"{lat['through_broker_p50_ms']:.2f} / {lat['through_broker_p99_ms']:.2f} ms"),
        ("  same work sent to the worker directly p50 / p99",
         f"{lat['direct_p50_ms']:.2f} / {lat['direct_p99_ms']:.2f} ms"),
        ("  broker's added latency p50 / p99 (median run)",
         f"{lat['added_p50_ms']:.2f} / {lat['added_p99_ms']:.2f} ms"),
        ("  broker's added p99 in each run", f"{added_runs} ms"),
        ("machine: cores, load average at start / end",
         f"{machine['cores']:.0f}, {machine['load_at_start']:.1f} / {machine['load_at_end']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"| {name:<{width}} | {value} |" for name, value in rows)


def _cpu_shares(phase: dict[str, float]) -> str:
    return (f"{phase['cpu_client']:.0%} {phase['cpu_p1']:.0%} "
            f"{phase['cpu_d1'] + phase['cpu_d2']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=256, help="closed-loop streams")
    parser.add_argument("--rate", type=float, default=500.0, help="offered load, requests/s")
    parser.add_argument("--latency-runs", type=int, default=3, help="repetitions of phase 4")
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--phases", nargs="+", default=["raw", "requests", "tokens", "latency"],
                        choices=["raw", "requests", "tokens", "latency"])
    args = parser.parse_args()
    figures = run(args)
    if set(args.phases) == {"raw", "requests", "tokens", "latency"}:
        print(report(figures))
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
