"""Faults under a live deployment (mock engines as real Slurm jobs): a worker's job cancelled by
someone else mid-request or failing (its process killed -9), and the node under the deployment's
jobs set DOWN by the admin (NODE_FAIL). Every request completes (the broker re-routes what the
lost worker held), the lost jobs are replaced - elsewhere when their partition has no node left -
and nothing is left running after `down`.

The node test uses the dev cluster's spare node under the lock tests/slurm/test_nodes.py takes,
so no other test sees it change."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from slurm_helpers import SPARE_NODE
from test_nodes import spare_node  # noqa: F401 (the fixture: the spare node, locked, resumed after)
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    counts,
    live_jobs,
    mock_profile_data,
    partition_like,
    ready,
    slurm_deployments,
)

from tsslurm.broker.pending import node_usable
from tsslurm.devcluster.layout import TEST_REASON_PREFIX
from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(180)


def _work(count: int, seed: int, max_tokens: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(32, 127) for _ in range(rng.randrange(20, 150))], max_tokens)
            for _ in range(count)]


async def _serve_through(d, work, fault, after_tokens: int = 10) -> list:
    """Serve `work` concurrently; run `fault()` once every answer has `after_tokens` tokens."""
    client = d.client(timeout_s=120)
    calls = [asyncio.create_task(client.generate(p, n, request_id=f"r{i}"))
             for i, (p, n) in enumerate(work)]
    while len(client.calls) < len(work) or \
            min(len(c.tokens) for c in client.calls.values()) < after_tokens:
        await asyncio.sleep(0.02)
    await asyncio.to_thread(fault)
    try:
        return await asyncio.gather(*calls)
    finally:
        await client.close()


FAULTS = {
    "cancelled": (lambda adapter, job: adapter.cancel([job]), "CANCELLED", "handovers"),
    "failed": (lambda adapter, job: adapter.cancel([job], signal="KILL", batch_only=True),
               "FAILED", "retries"),
}
"""fault -> (act, Slurm's final state, how the broker moved the worker's requests). Someone
else's scancel: the worker gets SIGTERM and hands its requests back. Its process killed -9 (an
OOM kill, a crash): the job FAILED, and the broker sends what it held again elsewhere."""


def _end_reasons(d, job_id: str, word: str, timeout_s: float = 30.0) -> str:
    """The job's ended and final reasons in the event log, once one names Slurm's `word`."""
    deadline = time.monotonic() + timeout_s
    while True:
        reasons = " | ".join(e["reason"] for e in d.events("job")
                             if e["job_id"] == job_id and e["new"] in ("ended", "final"))
        if word in reasons or time.monotonic() > deadline:
            return reasons
        time.sleep(0.2)


def _wait_usable(adapter, name: str, timeout_s: float = 30.0) -> None:
    """A node just resumed from DOWN can take a moment to be idle again."""
    deadline = time.monotonic() + timeout_s
    while not any(n.name == name and node_usable(n) for n in adapter.nodes()):
        assert time.monotonic() < deadline, f"node {name} not usable: {adapter.nodes()}"
        time.sleep(0.2)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_worker_lost_mid_request_is_replaced_and_its_requests_rerouted(
        slurm, slurm_deployments, fault: str) -> None:  # noqa: F811
    act, slurm_state, moved_by = FAULTS[fault]
    data = mock_profile_data()
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 2, "max": 2},
                     "convertible": {"min": 0, "max": 0}}
    d = slurm_deployments(data)
    d.start()
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode", 2)(s), "the pools", 60)
    victim = next(j.job_id for j in status.jobs if j.role == "decode")
    work = _work(30, seed=1, max_tokens=200)
    results = asyncio.run(_serve_through(d, work, lambda: act(slurm.adapter, victim)))
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in work]

    status = d.wait(lambda s: counts(s, "decode")["ready"] == 2
                    and victim not in {j.job_id for j in s.jobs}, "a replacement decoder", 60)
    replacement = {j.job_id for j in status.jobs if j.role == "decode"} - {victim}
    assert len(replacement) == 2 and max(replacement, key=int) > victim
    ended = [e for e in d.events("job") if e["job_id"] == victim and e["new"] == "ended"]
    assert len(ended) == 1, ended
    assert slurm_state in _end_reasons(d, victim, slurm_state)
    moved = [r for r in d.records(len(work)) if f"decoder-{victim}" in r.workers.split(",")[:-1]]
    assert moved and all(r.outcome == "ok" and getattr(r, moved_by) >= 1 for r in moved), moved
    assert d.down().returncode == 0
    assert not live_jobs(slurm)


def test_a_node_set_down_has_its_jobs_replaced_elsewhere(
        slurm, spare_node, slurm_deployments) -> None:  # noqa: F811
    data = mock_profile_data()
    data["partitions"] = [partition_like(data, "spare"), partition_like(data, "a100")]
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    _wait_usable(slurm.adapter, spare_node)
    d = slurm_deployments(data)
    d.start()
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s)
                    and all(j.node for j in s.jobs), "the pools", 60)
    assert {(j.partition, j.node) for j in status.jobs} == {("spare", SPARE_NODE)}, \
        d.events("notice")
    first = {j.job_id for j in status.jobs}
    work = _work(20, seed=2, max_tokens=200)

    def node_down() -> None:
        slurm.adapter.set_node_state(spare_node, "DOWN", f"{TEST_REASON_PREFIX} {slurm.prefix}")

    results = asyncio.run(_serve_through(d, work, node_down))
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in work]
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s)
                    and not first & {j.job_id for j in s.jobs}, "replacements", 90)
    assert {j.partition for j in status.jobs} == {"a100"}
    spare = next(p for p in status.partitions if p.name == "spare")
    assert not spare.available and spare.why, status.partitions
    reasons = {job: _end_reasons(d, job, "NODE_FAIL") for job in first}
    assert all("NODE_FAIL" in reason for reason in reasons.values()), reasons
    assert any(e["notice"] == "partition" and e["subject"] == "spare"
               for e in d.events("notice")), "the event log says the partition is avoided"
    assert all(r.outcome == "ok" for r in d.records(len(work)))
    assert d.down().returncode == 0
    assert not live_jobs(slurm)
