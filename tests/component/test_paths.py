"""Which path requests take, read from the broker's records (not from timings): disaggregated while
the prefillers keep up, converted (a convertible decoder prefills itself) when prefill demand
exceeds what the prefillers absorb, plain when no prefiller is ready."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(120)

SLOW_PREFILL = {"vp": "prefill_tokens_per_s: 50000=>prefill_tokens_per_s: 4000"}
"""A prefiller absorbs V_P x the tightest TTFT target = 4,000 x 0.25 s = 1,000 tokens."""


async def _generate_all(d, jobs, prefix: str, concurrent: bool = True) -> list:
    client = d.client(timeout_s=60)
    try:
        calls = [client.generate(prompt, n, request_id=f"{prefix}-{i}")
                 for i, (prompt, n) in enumerate(jobs)]
        if concurrent:
            return await asyncio.gather(*calls)
        return [await call for call in calls]
    finally:
        await client.close()


def _jobs(count: int, prompt_tokens: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(32, 127) for _ in range(prompt_tokens)], 6) for _ in range(count)]


def test_burst_goes_to_the_convertible_and_quiet_traffic_is_disaggregated(deployment) -> None:
    d = deployment(**SLOW_PREFILL)
    d.start_broker()
    d.start_worker("p1", "prefill")
    d.start_worker("c1", "convertible")
    d.start_worker("d1", "decode")
    burst = _jobs(30, 300, seed=1)
    quiet = _jobs(3, 50, seed=2)
    for jobs, prefix, concurrent in ((burst, "burst", True), (quiet, "quiet", False)):
        results = asyncio.run(_generate_all(d, jobs, prefix, concurrent))
        assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in jobs]
    records = {r.request_id: r for r in d.records(33)}
    burst_paths = Counter(records[f"burst-{i}"].path for i in range(30))
    assert burst_paths["converted"] > 0 and burst_paths["disaggregated"] > 0
    assert set(burst_paths) == {"converted", "disaggregated"}
    for record in records.values():
        if record.path == "converted":
            assert record.workers == "c1", "a converted request is prefilled and decoded on c1"
        else:
            assert record.workers.split(",")[0] == "p1"
    assert [records[f"quiet-{i}"].path for i in range(3)] == ["disaggregated"] * 3


def test_without_a_prefiller_decoders_serve_whole_requests(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("c1", "convertible")
    d.start_worker("d1", "decode")
    jobs = _jobs(12, 200, seed=3)
    results = asyncio.run(_generate_all(d, jobs, "plain"))
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in jobs]
    records = d.records(12)
    assert {r.path for r in records} == {"plain"}
    assert {r.workers for r in records} == {"c1", "d1"}, "least-loaded spreads them over both"
