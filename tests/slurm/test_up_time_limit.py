"""A deployment outlives its workers' time limit (1 minute here; mock engines as real Slurm
jobs): workers are rotated before their limit - a replacement is submitted, the old worker is
drained once the replacement serves (or drains itself on Slurm's SIGUSR1 warning) - so a steady
load is served throughout. One request is longer than a worker's whole life: its worker, still
draining it at the limit, ends TIMEOUT, hands the request back, and the request completes on a
replacement. Nothing is left running after `down`.

Slurm enforces time limits on a 30 s cycle (jobs end 65-82 s after a 1-minute limit starts), so
this test runs about two minutes; it is the tier's longest."""

from __future__ import annotations

import asyncio
import random

import pytest
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    live_jobs,
    mock_profile_data,
    ready,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(300)

LONG_TOKENS = 2800
"""At 40 ms a token: 112 s, longer than the 65-92 s a 1-minute job lives (Slurm's 30 s cycle)."""


def _profile() -> dict:
    data = mock_profile_data()
    part = data["partitions"][0]
    part["time_limit"] = "1"
    part["velocities"]["decode_step"]["base_ms"] = 40.0
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    data["broker"]["request_timeout_s"] = 250
    return data


def test_a_deployment_outlives_its_workers_time_limit(slurm, slurm_deployments) -> None:  # noqa: F811
    d = slurm_deployments(_profile())
    d.start()
    first = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "the pools", 60)
    first_jobs = {j.job_id for j in first.jobs}
    rng = random.Random(4)
    long_prompt = [rng.randrange(32, 127) for _ in range(50)]
    steady: list[tuple[list[int], int]] = []

    async def run() -> tuple[list, object]:
        client = d.client(timeout_s=240)
        long_call = asyncio.create_task(client.generate(long_prompt, LONG_TOKENS,
                                                        request_id="longer-than-a-job"))
        tasks = []
        while not long_call.done():
            prompt = [rng.randrange(32, 127) for _ in range(rng.randrange(20, 120))]
            steady.append((prompt, 20))
            tasks.append(asyncio.create_task(client.generate(prompt, 20,
                                                             request_id=f"s{len(steady)}")))
            await asyncio.sleep(0.5)
        try:
            return await asyncio.gather(*tasks), await long_call
        finally:
            await client.close()

    results, long_result = asyncio.run(run())
    assert long_result.token_ids == mock_continuation(long_prompt, LONG_TOKENS)
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in steady]

    events = d.events("job")
    ended = {e["job_id"]: e["reason"] for e in events if e["new"] == "ended"}
    assert first_jobs <= set(ended), "every first-generation job was rotated out"
    final = {e["job_id"]: e["reason"] for e in events if e["new"] == "final"}
    assert any("TIMEOUT" in final.get(job, ended[job]) for job in first_jobs), (ended, final)
    drained = [e for e in events if e["new"] == "draining"]
    assert drained and all(e["old"] == "ready" for e in drained)
    long_record = next(r for r in d.records(len(steady) + 1) if r.request_id == "longer-than-a-job")
    assert long_record.outcome == "ok" and len(long_record.workers.split(",")) >= 3, \
        "the long request was handed back at its decoder's limit and finished elsewhere"
    decoders = {r.workers.split(",")[-1] for r in d.records() if r.request_id.startswith("s")}
    assert len(decoders) >= 2, "the steady load was served by successive decoders"
    assert d.down().returncode == 0
    assert not live_jobs(slurm)
