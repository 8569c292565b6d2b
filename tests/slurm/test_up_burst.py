"""A burst on a live deployment (mock engines as real Slurm jobs): the load jumps 5x while the new
prefillers the policy asks for are held in the Slurm queue (the partition submits every job
held; the test releases them, as a busy cluster would start them late). Requests take the
converted path at once while those jobs pend, and the disaggregated path again once they serve.
Nothing is submitted twice for the held jobs, no request is lost, and the snapshots the broker
recorded replay through the PolicyRunner to the decisions it made."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    counts,
    live_jobs,
    mock_profile_data,
    ready,
    replay_mismatches,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(240)

PROMPT_TOKENS = 300
BASE_RATE, BURST_RATE = 4.0, 20.0
"""Requests/s of 300 tokens: 1,200 and 6,000 input tokens/s against 4,000 per prefiller."""


def _profile() -> dict:
    data = mock_profile_data()
    part = data["partitions"][0]
    part["sbatch_options"] = {"hold": ""}
    part["velocities"]["prefill_tokens_per_s"] = 4000
    data["pools"] = {"prefill": {"min": 1, "max": 3}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 1, "max": 1}}
    return data


class Load:
    """Requests at a settable rate, each labelled with the phase it was sent in."""

    def __init__(self, client) -> None:
        self.client = client
        self.rate = BASE_RATE
        self.phase = "base"
        self.sent: list[tuple[str, list[int], asyncio.Task]] = []
        self.running = True
        self.rng = random.Random(11)

    async def run(self) -> None:
        while self.running:
            prompt = [self.rng.randrange(32, 127) for _ in range(PROMPT_TOKENS)]
            request_id = f"{self.phase}-{len(self.sent)}"
            task = asyncio.create_task(self.client.generate(prompt, 8, request_id=request_id))
            self.sent.append((request_id, prompt, task))
            await asyncio.sleep(1.0 / self.rate)


def _release_held(slurm, wanted: int = 1) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = [j.job_id for j in live_jobs(slurm) if j.pending and j.reason == "JobHeldUser"]
        if len(held) >= wanted:
            slurm.adapter.release(held)
            return held
        time.sleep(0.1)
    raise AssertionError(f"fewer than {wanted} held jobs after 30 s: {live_jobs(slurm)}")


def _held_prefiller_shown(status) -> bool:
    """The status shows a pending prefiller with Slurm's reason (once the backend polled it)."""
    return any(j.role == "prefill" and j.state == "pending" and j.reason == "JobHeldUser"
               for j in status.jobs)


def test_a_burst_takes_the_converted_path_while_new_prefillers_pend(
        slurm, slurm_deployments) -> None:  # noqa: F811
    d = slurm_deployments(_profile())
    d.start()
    initial = _release_held(slurm, wanted=3)
    d.wait(lambda s: all(counts(s, r)["ready"] == 1 for r in ("prefill", "decode", "convertible")),
           "the initial pools to serve", timeout_s=60)

    async def run() -> tuple[Load, dict[str, float]]:
        client = d.client(timeout_s=120)
        load = Load(client)
        driver = asyncio.create_task(load.run())
        marks: dict[str, float] = {}
        try:
            await asyncio.sleep(8)
            load.rate, load.phase = BURST_RATE, "burst"
            await asyncio.to_thread(d.wait, _held_prefiller_shown,
                                    "a new prefiller pending, held, in the status", 60)
            load.phase, marks["held"] = "held", time.time()
            await asyncio.sleep(6)
            marks["released"] = time.time()
            released = await asyncio.to_thread(_release_held, slurm)
            await asyncio.to_thread(d.wait, ready("prefill", 2), "new prefillers to serve", 60)
            load.phase = "started"
            await asyncio.sleep(2)
            load.phase = "after"
            await asyncio.sleep(8)
            marks["released_jobs"] = len(released)
        finally:
            load.running = False
            await driver
        results = await asyncio.gather(*(task for _, _, task in load.sent))
        await client.close()
        for (_, prompt, _), result in zip(load.sent, results):
            assert result.token_ids == mock_continuation(prompt, 8)
        return load, marks

    load, marks = asyncio.run(run())
    records = {r.request_id: r for r in d.records(len(load.sent))}
    assert len(records) == len(load.sent) and all(r.outcome == "ok" for r in records.values())
    paths = {phase: Counter(r.path for i, r in records.items() if i.startswith(phase + "-"))
             for phase in ("base", "held", "after")}
    held_converted = paths["held"]["converted"] / sum(paths["held"].values())
    after_converted = paths["after"]["converted"] / sum(paths["after"].values())
    assert paths["held"]["converted"] > 0, paths
    assert paths["after"]["disaggregated"] > sum(paths["after"].values()) / 2, paths
    assert after_converted < held_converted / 2, paths

    submits = [e for e in d.events("job") if e["new"] == "pending" and e["role"] == "prefill"
               and e["reason"] == "submitted" and e["time"] < marks["released"]]
    assert 2 <= len(submits) <= 3, "prefillers held in the queue were never submitted twice"
    decisions = d.events("decision")
    assert len({str(e["targets"]["prefill"]) for e in decisions}) >= 2, "the targets moved"
    replayed, mismatches = replay_mismatches(d.state / "steps.jsonl")
    assert replayed > 20 and not mismatches, mismatches[:3]

    assert d.down().returncode == 0
    assert not live_jobs(slurm), "down left jobs of the deployment in Slurm"
    assert set(initial) <= {job.job_id for job in d.jobs()}
