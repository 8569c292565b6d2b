"""The shared engine timing model (pure)."""

from __future__ import annotations

import msgspec
import pytest

from tsslurm.perfmodel import kv_transfer_seconds, prefill_seconds
from tsslurm.profile import load_profile


@pytest.mark.timeout(10)
def test_a_kv_pull_costs_its_fixed_latency_plus_tokens_over_v_n() -> None:
    v = load_profile("local-tiny").partitions[0].velocities
    assert v.kv_transfer_latency_ms > 0, "local-tiny carries the profiler's measured latency"
    pull = kv_transfer_seconds(2048, v)
    assert pull == pytest.approx(v.kv_transfer_latency_ms / 1000 + 2048 / v.kv_transfer_tokens_per_s)
    without = msgspec.structs.replace(v, kv_transfer_latency_ms=0.0)
    assert kv_transfer_seconds(2048, without) == pytest.approx(2048 / v.kv_transfer_tokens_per_s)


@pytest.mark.timeout(10)
def test_a_prefill_batch_costs_its_overhead_plus_tokens_over_v_p() -> None:
    v = load_profile("local-tiny").partitions[0].velocities
    assert prefill_seconds(1000, v) == pytest.approx(
        v.prefill_overhead_ms / 1000 + 1000 / v.prefill_tokens_per_s)
