"""A lull on a live deployment (mock engines as real Slurm jobs, the aibrix baseline running live
with a short cooldown): under load it grows past its minimums; when the load falls it scales
down by draining - a drained worker takes no new request, finishes the ones it holds, leaves -
and only then is its job cancelled. No request is lost or handed over on the way."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    counts,
    live_jobs,
    mock_profile_data,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(240)


def _profile() -> dict:
    data = mock_profile_data()
    data["partitions"][0]["velocities"]["kv_capacity_tokens"] = 8192
    data["pools"] = {"prefill": {"min": 1, "max": 2}, "decode": {"min": 1, "max": 3},
                     "convertible": {"min": 0, "max": 0}}
    return data


def _request(rng: random.Random, max_tokens: int) -> tuple[list[int], int]:
    return [rng.randrange(32, 127) for _ in range(200)], max_tokens


def _wait_gone_from_slurm(slurm, job_ids: list[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while {j.job_id for j in live_jobs(slurm)} & set(job_ids):
        assert time.monotonic() < deadline, f"let-go jobs still in Slurm: {live_jobs(slurm)}"
        time.sleep(0.2)


def test_a_lull_scales_down_by_draining_then_cancelling(
        slurm, slurm_deployments) -> None:  # noqa: F811
    d = slurm_deployments(_profile(), "--policy", "aibrix@hold_s=3@kv_target=0.5")
    d.start()
    d.wait(lambda s: counts(s, "decode")["ready"] == 1, "the first decoder", timeout_s=60)
    rng = random.Random(3)
    sent: list[tuple[list[int], int]] = []
    peak = {"decode": 0}

    async def run() -> list:
        client = d.client(timeout_s=120)
        tasks = []

        def send(max_tokens: int) -> None:
            prompt, n = _request(rng, max_tokens)
            sent.append((prompt, n))
            tasks.append(asyncio.create_task(client.generate(prompt, n,
                                                             request_id=f"r{len(sent)}")))

        for _ in range(30):
            send(500)
        for _ in range(40):  # busy: keep about 30 long requests in flight for a while
            await asyncio.sleep(0.3)
            send(500)
            peak["decode"] = max(peak["decode"], counts(d.status(), "decode")["ready"])
        for _ in range(14):  # the lull: a trickle the draining decoders still hold
            await asyncio.sleep(1.5)
            send(300)
        await asyncio.to_thread(d.wait, lambda s: counts(s, "decode")["ready"] == 1
                                and counts(s, "decode")["draining"] == 0,
                                "the decoders back to their minimum", 90)
        try:
            return await asyncio.gather(*tasks)
        finally:
            await client.close()

    results = asyncio.run(run())
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in sent]
    assert peak["decode"] >= 2, "the load never grew the decode pool"

    transitions: dict[str, list[str]] = {}
    draining_at: dict[str, float] = {}
    for event in d.events("job"):
        if event["new"] != "final":
            transitions.setdefault(event["job_id"], []).append(event["new"])
        if event["new"] == "draining":
            draining_at[event["job_id"]] = event["time"]
    scaled_down = [job for job, states in transitions.items() if states[-1] == "ended"]
    assert scaled_down, "no job was let go"
    for job in scaled_down:
        assert transitions[job][-3:] == ["ready", "draining", "ended"], (job, transitions[job])
    _wait_gone_from_slurm(slurm, scaled_down)
    records = d.records(len(sent))
    assert all(r.outcome == "ok" and r.handovers == 0 and r.retries == 0 for r in records)
    finished_while_draining = [
        r for r in records for job in scaled_down
        if r.workers.split(",")[-1].endswith(f"-{job}") and r.finished_at > draining_at[job]]
    assert finished_while_draining, "a drained worker finishes what it holds before it leaves"

    assert d.down().returncode == 0
    assert not live_jobs(slurm)
