"""How fast the policy package is on the simulator's hot path: SnapshotBuilder events per second
(arrival + prefill finish + first token + finish per request) and PolicyRunner steps per second,
next to a reference measured in the same run (a bare Python loop appending to a deque).

    .venv/bin/python benchmarks/policy_speed.py [REQUESTS]
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque

from tsslurm.policy.builder import SnapshotBuilder
from tsslurm.policy.runner import PolicyRunner
from tsslurm.profile import load_profile


def feed(builder: SnapshotBuilder, count: int, seed: int = 1) -> float:
    rng = random.Random(seed)
    now, started = 0.0, time.perf_counter()
    for k in range(count):
        now += rng.expovariate(100.0)
        rid = str(k)
        builder.arrival(now, rid, rng.randint(10, 8000))
        builder.prefill_finished(now, rid)
        builder.first_token(now, rid)
        builder.finished(now, rid, rng.randint(1, 1000))
    return time.perf_counter() - started


def reference(count: int) -> float:
    started, queue = time.perf_counter(), deque()
    for k in range(4 * count):
        queue.append(k)
        if len(queue) > 1000:
            queue.popleft()
    return time.perf_counter() - started


def steps(builder: SnapshotBuilder, policy: str, ticks: int) -> float:
    runner = PolicyRunner(policy)
    now = builder.estimator.last_time
    started = time.perf_counter()
    for tick in range(ticks):
        runner.step(builder.snapshot(now + tick))
    return time.perf_counter() - started


def main(count: int) -> None:
    builder = SnapshotBuilder.from_profile(load_profile("llama3-8b-a100"))
    events = 4 * count
    took = feed(builder, count)
    ref = reference(count)
    print(f"builder: {events:,} events in {took:.2f} s = {events / took:,.0f} events/s "
          f"(reference deque loop: {events / ref:,.0f} ops/s)")
    for policy in ("tokenscale", "aibrix", "dynamo", "static"):
        took = steps(builder, policy, 2000)
        print(f"{policy}: 2,000 steps (snapshot + decide + guards + reconcile) in {took:.2f} s "
              f"= {1000 * took / 2000:.3f} ms per step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 250_000)
