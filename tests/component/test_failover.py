"""Nothing is lost: a decoder killed with SIGKILL mid-stream, a worker drained with SIGTERM, and a
broker restarted under its workers and clients - every request still completes with exactly the
tokens an uninterrupted run gives, and the broker's records say what happened."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys

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


def test_a_fatal_engine_error_is_reported_and_its_requests_continue(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode", TSSLURM_MOCK_FAIL_AFTER_S="1.5")
    d.start_worker("d2", "decode")
    jobs = _jobs(20, seed=5, max_tokens=200)
    results = asyncio.run(_serve_while(d, jobs, lambda: None, 1))
    _assert_exact(jobs, results)
    assert d.exit_code("d1") == 1
    d.wait_for_log("worker d1 lost: engine error")
    assert "injected failure" in d.log("d1")
    records = d.records(20)
    failed_over = [r for r in records if r.workers.startswith("d1")]
    assert failed_over and all(r.retries == 1 and r.workers.endswith("d2") for r in failed_over)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "TSSLURM_ROLE"),
    ({"TSSLURM_ROLE": "chef"}, "TSSLURM_ROLE='chef'"),
    ({"TSSLURM_ROLE": "decode"}, "TSSLURM_PROFILE is not set"),
    ({"TSSLURM_ROLE": "decode", "TSSLURM_PROFILE": "no-such-profile"}, "cannot read"),
    ({"TSSLURM_ROLE": "decode", "TSSLURM_PROFILE": "local-mock", "TSSLURM_PARTITION": "x"},
     "TSSLURM_PARTITION='x' is not in the profile (a100)"),
    ({"TSSLURM_ROLE": "decode", "TSSLURM_PROFILE": "local-mock", "TSSLURM_STATE_DIR": "/nowhere"},
     "no deployment state directory at /nowhere"),
    ({"TSSLURM_ROLE": "decode", "TSSLURM_PROFILE": "local-mock",
      "TSSLURM_BROKER_ADDRESS": "localhost:5"}, "expected tcp://host:port"),
])
def test_a_launcher_without_a_usable_environment_says_why(env: dict[str, str],
                                                          message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TSSLURM_")}
    done = subprocess.run([sys.executable, "-m", "tsslurm.launcher"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
