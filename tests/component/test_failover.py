"""Nothing is lost: a decoder killed with SIGKILL mid-stream, a worker drained with SIGTERM, and a
broker restarted under its workers and clients - every request still completes with exactly the
tokens an uninterrupted run gives, and the broker's records say what happened."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(120)


def _jobs(count: int, seed: int, max_tokens: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(32, 127) for _ in range(rng.randrange(8, 120))], max_tokens)
            for _ in range(count)]


async def _serve_while(d, jobs, action, after_tokens: int, **client_options) -> list:
    """Run `jobs` concurrently; call `action()` once every stream holds `after_tokens` tokens."""
    client = d.client(timeout_s=60, **client_options)
    calls = [asyncio.create_task(client.generate(prompt, max_tokens, request_id=f"req-{i}"))
             for i, (prompt, max_tokens) in enumerate(jobs)]
    while len(client.calls) < len(jobs) or \
            min(len(call.tokens) for call in client.calls.values()) < after_tokens:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(action)
    try:
        return await asyncio.gather(*calls)
    finally:
        await client.close()


def _assert_exact(jobs, results) -> None:
    for (prompt, max_tokens), result in zip(jobs, results):
        assert result.token_ids == mock_continuation(prompt, max_tokens)
        assert result.finish_reason == "length"


def test_a_decoder_killed_mid_stream_loses_no_request(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")
    jobs = _jobs(40, seed=1, max_tokens=120)
    results = asyncio.run(_serve_while(d, jobs, lambda: d.signal("d1", signal.SIGKILL), 10))
    _assert_exact(jobs, results)
    records = d.records(40)
    moved = [r for r in records if r.workers.split(",")[1] == "d1"]
    assert moved, "d1 held some of the streams when it was killed"
    for record in moved:
        assert record.retries == 1 and record.outcome == "ok"
        assert record.workers.split(",")[-1] == "d2", "continued on the surviving decoder"
    assert "worker d1 lost: silent for" in d.broker_log()
    assert d.exit_code("d1") == -signal.SIGKILL


def test_a_drained_decoder_hands_its_requests_back(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")
    jobs = _jobs(30, seed=2, max_tokens=100)
    results = asyncio.run(_serve_while(d, jobs, lambda: d.signal("d1", signal.SIGTERM), 5))
    _assert_exact(jobs, results)
    assert d.exit_code("d1") == 0
    records = d.records(30)
    handed = [r for r in records if r.workers.startswith("d1")]
    assert handed and all(r.handovers == 1 and r.retries == 0 for r in handed)
    assert all(r.workers.endswith("d2") for r in handed)
    assert "worker d1 disconnected: SIGTERM" in d.broker_log()


def test_sigusr1_before_the_time_limit_also_hands_back(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    jobs = _jobs(10, seed=3, max_tokens=80)

    def rotate() -> None:
        d.signal("d1", signal.SIGUSR1)
        d.start_worker("d2", "decode", wait=False)

    results = asyncio.run(_serve_while(d, jobs, rotate, 5))
    _assert_exact(jobs, results)
    assert d.exit_code("d1") == 0


def test_workers_and_clients_survive_a_broker_restart(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    jobs = _jobs(8, seed=4, max_tokens=150)

    def restart() -> None:
        d.signal("broker", signal.SIGKILL)
        d.exit_code("broker")
        d.start_broker()

    results = asyncio.run(_serve_while(d, jobs, restart, 5, idle_s=0.5, reconnects=20))
    _assert_exact(jobs, results)
    d.wait_for_log("worker d1 ready", count=2)
    d.wait_for_log("worker p1 ready", count=2)
    assert "aborting" in d.log("d1"), "the decoder dropped the requests the old broker gave it"
