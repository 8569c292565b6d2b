"""The seams the autoscaler (issue 7) builds on, with the broker in this process and real mock
workers: the drain API (a drained worker finishes its requests, takes no more, disconnects and
exits 0), the event hook (arrivals, first tokens, finishes, worker changes), worker views."""

from __future__ import annotations

import asyncio
import random

import pytest

from tsslurm.broker.events import Arrival, Finished, FirstToken, WorkerChange
from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(120)


def _jobs(count: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(32, 127) for _ in range(rng.randrange(5, 60))], 60)
            for _ in range(count)]


def test_drain_lets_a_worker_finish_and_leave(deployment) -> None:
    d = deployment()
    broker = d.start_broker_in_process()
    events: list[object] = []
    d.on_loop(broker, lambda now: broker.events.subscribe(events.append))
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")
    first, later = _jobs(16, seed=1), _jobs(6, seed=2)

    async def run() -> tuple[list, list]:
        client = d.client(timeout_s=60)
        calls = [asyncio.create_task(client.generate(p, n, request_id=f"first-{i}"))
                 for i, (p, n) in enumerate(first)]
        while len(client.calls) < len(first) or \
                min(len(c.tokens) for c in client.calls.values()) < 5:
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(d.on_loop, broker,
                                       lambda now: broker.core.drain("d1", now, "scale down"))
        after = [await client.generate(p, n, request_id=f"later-{i}")
                 for i, (p, n) in enumerate(later)]
        try:
            return await asyncio.gather(*calls), after
        finally:
            await client.close()

    results, after = asyncio.run(run())
    for (prompt, n), result in zip(first + later, results + after):
        assert result.token_ids == mock_continuation(prompt, n)
    assert d.exit_code("d1") == 0
    records = {r.request_id: r for r in d.records(len(first) + len(later))}
    on_d1 = [r for r in records.values() if r.workers.startswith("d1")]
    assert on_d1 and all(r.workers == "d1" and r.handovers == r.retries == 0 for r in on_d1), \
        "a drained worker finishes what it holds"
    assert {records[f"later-{i}"].workers for i in range(len(later))} == {"d2"}
    d.wait_for_log("worker d1 disconnected: drained")
    changes = [(e.worker_id, e.change) for e in events if isinstance(e, WorkerChange)]
    assert changes == [("d1", "ready"), ("d2", "ready"), ("d1", "draining"), ("d1", "left")]
    views = d.on_loop(broker, lambda now: broker.core.pool.views())
    assert [(v.worker_id, v.role, v.state, v.in_flight) for v in views] == \
        [("d2", "decoder", "ready", 0)]
    assert d.on_loop(broker, lambda now: broker.core.pool.counts())["decode"] == \
        {"ready": 1, "draining": 0}


def test_event_hook_sees_every_request(deployment) -> None:
    d = deployment()
    broker = d.start_broker_in_process()
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    jobs = _jobs(10, seed=3)

    async def run() -> list:
        client = d.client(timeout_s=60)
        try:
            return await asyncio.gather(*(client.generate(p, n, request_id=f"r{i}")
                                          for i, (p, n) in enumerate(jobs)))
        finally:
            await client.close()

    results = asyncio.run(run())
    events = d.on_loop(broker, lambda now: broker.events.drain())
    arrivals = {e.request_id: e for e in events if isinstance(e, Arrival)}
    firsts = {e.request_id: e for e in events if isinstance(e, FirstToken)}
    finishes = {e.request_id: e for e in events if isinstance(e, Finished)}
    assert set(arrivals) == set(firsts) == set(finishes) == {f"r{i}" for i in range(10)}
    for i, (prompt, n) in enumerate(jobs):
        arrival, first, finish = arrivals[f"r{i}"], firsts[f"r{i}"], finishes[f"r{i}"]
        assert (arrival.input_tokens, arrival.max_tokens) == (len(prompt), n)
        assert arrival.time <= first.time <= finish.time and first.ttft_s > 0
        assert (finish.outcome, finish.path, finish.output_tokens) == ("ok", "disaggregated", n)
        assert finish.tpot_s is not None and finish.tpot_s > 0
    assert [r.completion_tokens for r in results] == [n for _, n in jobs]
    assert d.on_loop(broker, lambda now: broker.events.drain()) == [], "drained events are gone"
