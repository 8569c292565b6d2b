"""Routing decisions (tsslurm/broker/routing.py): least-loaded eligible worker, the disaggregated
path by default, the burst path to convertibles when prefill demand exceeds what prefillers
absorb, plain "full" work when no prefiller is ready, None (keep queued) when nobody has room."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tsslurm.broker import routing
from tsslurm.protocol import WorkerStats

pytestmark = pytest.mark.timeout(30)


@dataclass
class FakeWorker:
    """The attributes routing reads, nothing else (an honest stand-in for broker.workers.Worker)."""

    name: str
    role: str
    accepting: bool = True
    in_flight_count: int = 0
    prefill_tokens: int = 0
    kv_reserved: int = 0
    kv_capacity: int = 10_000
    prefill_cap: int = 2_000
    absorb_tokens: int = 4_000
    stats: WorkerStats = field(default_factory=WorkerStats)


def prefiller(name: str = "p", **kw: object) -> FakeWorker:
    return FakeWorker(name, routing.PREFILLER, **kw)  # type: ignore[arg-type]


def decoder(name: str = "d", **kw: object) -> FakeWorker:
    return FakeWorker(name, routing.DECODER, **kw)  # type: ignore[arg-type]


def convertible(name: str = "c", **kw: object) -> FakeWorker:
    return FakeWorker(name, routing.CONVERTIBLE, **kw)  # type: ignore[arg-type]


def test_normal_request_goes_to_the_least_loaded_prefiller() -> None:
    busy, idle = prefiller("busy", prefill_tokens=2_000, in_flight_count=2), prefiller("idle")
    placement = routing.place_new(500, 600, [busy, decoder(), idle, convertible()], 500)
    assert placement == (idle, routing.PREFILL, routing.DISAGGREGATED)


def test_prefill_load_is_relative_to_what_each_prefiller_absorbs() -> None:
    small = prefiller("small", prefill_tokens=1_000, absorb_tokens=2_000)
    large = prefiller("large", prefill_tokens=1_500, absorb_tokens=8_000)
    assert routing.place_new(100, 200, [small, large], 100).worker is large


def test_burst_goes_to_a_convertible_when_prefillers_are_saturated() -> None:
    saturated = prefiller(prefill_tokens=3_900, in_flight_count=4)
    conv = convertible(prefill_tokens=0)
    placement = routing.place_new(500, 600, [saturated, decoder(), conv], queued_prefill_tokens=500)
    assert placement == (conv, routing.FULL, routing.CONVERTED)


def test_convertible_cap_limits_the_burst_path() -> None:
    saturated = prefiller(prefill_tokens=3_900, in_flight_count=4)
    full_conv = convertible(prefill_tokens=1_800, in_flight_count=3, prefill_cap=2_000)
    # the convertible would exceed its cap, and the prefiller cannot absorb 500 more: keep queued
    assert routing.place_new(500, 600, [saturated, full_conv], 500) is None
    # a request small enough for both: the cap still lets the convertible take it
    assert routing.place_new(150, 200, [saturated, full_conv], 150).worker is full_conv


def test_burst_with_queued_demand_even_if_the_prefiller_has_some_room() -> None:
    room = prefiller(prefill_tokens=1_000, in_flight_count=1)
    conv = convertible()
    # 1,000 in flight + 3,500 queued > 4,000 absorbed: the convertible takes the head request
    assert routing.place_new(500, 600, [room, conv], 3_500).path == routing.CONVERTED
    # without that queue the prefiller takes it
    assert routing.place_new(500, 600, [room, conv], 500).path == routing.DISAGGREGATED


def test_plain_decoders_never_take_the_burst_path_while_prefillers_are_ready() -> None:
    saturated = prefiller(prefill_tokens=3_900, in_flight_count=4)
    assert routing.place_new(500, 600, [saturated, decoder()], 5_000) is None


def test_no_prefiller_ready_decoders_take_whole_requests() -> None:
    leaving = prefiller(accepting=False)
    loaded = decoder("loaded", kv_reserved=5_000, in_flight_count=5)
    light = convertible("light", kv_reserved=1_000, in_flight_count=1)
    placement = routing.place_new(500, 600, [leaving, loaded, light], 500)
    assert placement == (light, routing.FULL, routing.PLAIN)


def test_only_decoders_still_serve() -> None:
    only = decoder()
    assert routing.place_new(800, 900, [only], 800) == (only, routing.FULL, routing.PLAIN)


def test_nothing_accepting_keeps_the_request_queued() -> None:
    assert routing.place_new(10, 20, [], 10) is None
    assert routing.place_new(10, 20, [decoder(accepting=False)], 10) is None


def test_decode_goes_to_the_decoder_with_the_most_free_kv() -> None:
    a = decoder("a", kv_reserved=6_000, in_flight_count=3)
    b = convertible("b", kv_reserved=2_000, in_flight_count=4)
    assert routing.place_decode(1_000, [prefiller(), a, b]) is b


def test_decode_load_counts_the_workers_own_report() -> None:
    a = decoder("a", kv_reserved=1_000, in_flight_count=1,
                stats=WorkerStats(kv_used_tokens=9_000))
    b = decoder("b", kv_reserved=3_000, in_flight_count=2)
    assert routing.place_decode(500, [a, b]) is b


def test_decode_waits_when_no_kv_fits_but_an_idle_decoder_takes_anything() -> None:
    full = decoder("full", kv_reserved=9_500, in_flight_count=4)
    assert routing.place_decode(1_000, [full]) is None
    idle = decoder("idle", kv_capacity=500)
    assert routing.place_decode(1_000, [full, idle]) is idle


def test_draining_workers_get_nothing() -> None:
    assert routing.place_decode(10, [decoder(accepting=False)]) is None
    assert routing.place_new(10, 20, [prefiller(accepting=False), decoder(accepting=False)], 10) \
        is None


def test_demand_and_capacity() -> None:
    workers = [prefiller(prefill_tokens=100, absorb_tokens=1_000),
               prefiller(prefill_tokens=200, absorb_tokens=3_000)]
    assert routing.prefill_demand(workers, 50) == 350
    assert routing.absorb_capacity(workers) == 4_000
