"""The broker core's request table and worker lifecycle (tsslurm/broker/core.py), driven without
sockets: what it sends (a recording outbox), what it records, and its state after each step."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tsslurm.broker import requests as states
from tsslurm.broker.config import BrokerConfig
from tsslurm.broker.core import BrokerCore
from tsslurm.broker.events import Arrival, Finished, FirstToken, WorkerChange
from tsslurm.broker.requests import RequestRecord
from tsslurm.protocol import (
    Command,
    Disconnect,
    ErrorReply,
    GenerateRequest,
    OutputBatch,
    OutputItem,
    TokenDelta,
    WorkerInfo,
    WorkerStats,
    WorkItem,
)

pytestmark = pytest.mark.timeout(30)

CLIENT, OTHER_CLIENT = b"client-1", b"client-2"
KV = {"remote_engine_id": "p", "remote_block_ids": [1]}


class RecordingOutbox:
    def __init__(self) -> None:
        self.deltas: list[tuple[bytes, TokenDelta]] = []
        self.errors: list[tuple[bytes, ErrorReply]] = []
        self.work_items: list[tuple[bytes, WorkItem]] = []
        self.aborts: list[tuple[bytes, str]] = []
        self.commands: list[tuple[bytes, Command, msgspec.Struct]] = []

    def stream(self, client: bytes, delta: TokenDelta) -> None:
        self.deltas.append((client, delta))

    def error(self, client: bytes, reply: ErrorReply) -> None:
        self.errors.append((client, reply))

    def work(self, worker: bytes, item: WorkItem) -> None:
        self.work_items.append((worker, item))

    def abort(self, worker: bytes, request_id: str) -> None:
        self.aborts.append((worker, request_id))

    def send(self, worker: bytes, command: Command, body: msgspec.Struct) -> None:
        self.commands.append((worker, command, body))


class Harness:
    def __init__(self, **config: Any):
        settings: dict[str, Any] = {"deployment": "t", "model": "m", "max_context_tokens": 1000,
                                    "heartbeat_s": 1.0, "liveness": 3, "max_retries": 2}
        settings.update(config)
        self.outbox = RecordingOutbox()
        self.records: list[RequestRecord] = []
        self.core = BrokerCore(BrokerConfig(**settings), self.outbox, record=self.records.append)
        self.now = 1000.0

    def worker(self, name: str, role: str, **info: Any) -> Any:
        fields: dict[str, Any] = {"worker_id": name, "role": role, "model": "m", "engine": "mock",
                                  "kv_capacity_tokens": 10_000}
        fields.update(info)
        return self.core.ready(name.encode(), WorkerInfo(**fields), self.now)

    def submit(self, request_id: str = "r", prompt: list[int] | None = None, max_tokens: int = 4,
               client: bytes = CLIENT, **fields: Any) -> None:
        message = GenerateRequest(request_id=request_id, max_tokens=max_tokens,
                                  prompt_token_ids=prompt or [1, 2, 3], **fields)
        self.core.submit(client, message, self.now)
        self.core.dispatch(self.now)

    def output(self, worker: Any, *items: OutputItem) -> None:
        self.core.output(worker, OutputBatch(list(items)), self.now)
        self.core.dispatch(self.now)

    def last_work(self, worker: bytes) -> WorkItem:
        return [item for w, item in self.outbox.work_items if w == worker][-1]

    def streamed(self, request_id: str = "r") -> list[int]:
        tokens: list[int] = []
        for _, delta in self.outbox.deltas:
            if delta.request_id == request_id:
                assert delta.offset == len(tokens), "a delta must continue where the last ended"
                tokens.extend(delta.token_ids)
        return tokens


def tokens(request_id: str, ids: list[int], finish: str | None = None) -> OutputItem:
    return OutputItem(request_id=request_id, token_ids=ids, finish_reason=finish)


def prefilled(request_id: str = "r") -> OutputItem:
    return OutputItem(request_id=request_id, finish_reason="length", kv_transfer_params=KV)


def test_disaggregated_request_from_arrival_to_record() -> None:
    h = Harness()
    p, d = h.worker("p", "prefiller"), h.worker("d", "decoder")
    h.submit(prompt=[5, 6, 7], max_tokens=3)
    request = h.core.requests["r"]
    assert request.state == states.PREFILLING
    assert h.last_work(b"p") == WorkItem(request_id="r", mode="prefill", prompt_token_ids=[5, 6, 7],
                                         max_tokens=1)
    assert p.prefill_tokens == 3 and p.in_flight_count == 1

    h.output(p, prefilled())
    assert request.state == states.DECODING and p.prefill_tokens == 0
    decode = h.last_work(b"d")
    assert (decode.mode, decode.max_tokens, decode.kv_transfer_params) == ("decode", 3, KV)
    assert d.kv_reserved == 6

    h.output(d, tokens("r", [40]))
    h.output(d, tokens("r", [41]))
    h.output(d, tokens("r", [42], "length"))
    assert h.streamed() == [40, 41, 42]
    last = h.outbox.deltas[-1][1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 3)
    assert "r" not in h.core.requests and d.kv_reserved == 0 and d.in_flight_count == 0
    record = h.records[-1]
    assert (record.path, record.workers, record.outcome, record.output_tokens, record.retries) \
        == ("disaggregated", "p,d", "ok", 3, 0)
    kinds = [type(e) for e in h.core.events.drain() if not isinstance(e, WorkerChange)]
    assert kinds == [Arrival, FirstToken, Finished]


def test_a_lost_decoder_continues_from_the_streamed_tokens() -> None:
    h = Harness()
    d1 = h.worker("d1", "decoder")
    h.submit(prompt=[1, 2], max_tokens=5)
    assert h.last_work(b"d1").mode == "full"
    h.output(d1, tokens("r", [10]), )
    h.output(d1, tokens("r", [11]))
    h.core.disconnected(d1, Disconnect(reason="engine died", fatal=True), h.now)
    assert h.core.requests["r"].state == states.QUEUED
    d2 = h.worker("d2", "decoder")
    h.core.dispatch(h.now)
    continuation = h.last_work(b"d2")
    assert (continuation.prompt_token_ids, continuation.max_tokens) == ([1, 2, 10, 11], 3)
    h.output(d2, tokens("r", [12, 13]))
    h.output(d2, tokens("r", [14], "length"))
    assert h.streamed() == [10, 11, 12, 13, 14]
    assert (h.records[-1].retries, h.records[-1].workers) == (1, "d1,d2")


def test_a_silent_worker_is_dropped_and_told_to_register_again() -> None:
    h = Harness()
    d = h.worker("d", "decoder")
    h.submit()
    h.now += 2.0
    h.core.heartbeat(d, WorkerStats(running=1), h.now)
    h.now += 3.5
    h.core.beat(h.now)
    assert len(h.core.pool) == 0
    assert (b"d", Command.DISCONNECT) in [(w, c) for w, c, _ in h.outbox.commands]
    assert h.core.requests["r"].state == states.QUEUED and h.core.requests["r"].retries == 1


def test_a_drained_worker_hands_back_without_spending_retries() -> None:
    h = Harness()
    d = h.worker("d", "decoder")
    h.submit()
    assert h.core.drain("d", h.now, "scale down")
    assert not d.accepting
    h.submit("r2")
    assert [item.request_id for _, item in h.outbox.work_items] == ["r"]
    h.core.disconnected(d, Disconnect(reason="SIGTERM", handed_back=["r"]), h.now)
    request = h.core.requests["r"]
    assert (request.state, request.retries, request.handovers) == (states.QUEUED, 0, 1)


def test_retries_run_out_with_a_clear_error() -> None:
    h = Harness(max_retries=1)
    worker = h.worker("a", "decoder")
    h.submit()
    for _ in range(2):
        h.output(worker, OutputItem(request_id="r", error="boom"))
    client, error = h.outbox.errors[-1]
    assert (client, error.code, error.request_id) == (CLIENT, "unavailable", "r")
    assert "boom" in error.message and h.records[-1].outcome == "unavailable"


def test_prefill_without_kv_params_is_retried_elsewhere() -> None:
    h = Harness()
    p = h.worker("p", "prefiller")
    h.worker("d", "decoder")
    h.submit()
    h.output(p, OutputItem(request_id="r", finish_reason="length"))
    assert h.core.requests["r"].retries == 1
    assert [item.mode for _, item in h.outbox.work_items] == ["prefill", "prefill"]


def test_losing_the_prefiller_requeues_requests_whose_kv_it_held() -> None:
    h = Harness()
    p = h.worker("p", "prefiller")
    h.submit()
    h.output(p, prefilled())
    assert h.core.requests["r"].state == states.AWAITING_DECODE  # no decoder yet
    h.core.disconnected(p, Disconnect(reason="gone", fatal=True), h.now)
    assert h.core.requests["r"].state == states.QUEUED and not h.core.decode_queue


def test_deadline_fails_the_request_and_aborts_it_on_its_worker() -> None:
    h = Harness()
    h.worker("d", "decoder")
    h.submit(deadline_s=2.0)
    h.core.expire_requests(h.now + 1.0)
    assert "r" in h.core.requests
    h.core.expire_requests(h.now + 2.5)
    assert h.outbox.errors[-1][1].code == "timeout"
    assert h.outbox.aborts == [(b"d", "r")]


def test_resubmit_from_a_new_socket_resumes_and_the_same_socket_gets_nothing_twice() -> None:
    h = Harness()
    d = h.worker("d", "decoder")
    h.submit(max_tokens=4)
    h.output(d, tokens("r", [7, 8, 9]))
    sent = len(h.outbox.deltas)
    h.submit()
    assert len(h.outbox.deltas) == sent
    h.submit(client=OTHER_CLIENT, resume_from=1)
    client, delta = h.outbox.deltas[-1]
    assert (client, delta.token_ids, delta.offset) == (OTHER_CLIENT, [8, 9], 1)
    h.output(d, tokens("r", [10], "length"))
    assert h.outbox.deltas[-1][0] == OTHER_CLIENT
    h.submit(client=b"third", resume_from=0)
    replay = h.outbox.deltas[-1][1]
    assert (replay.token_ids, replay.finish_reason, replay.offset) == ([7, 8, 9, 10], "length", 0)
    h.submit(prompt=[9, 9, 9])
    assert h.outbox.errors == []  # a finished id is replayed, not re-checked
    h.submit("live", prompt=[1])
    h.submit("live", prompt=[2])
    assert h.outbox.errors[-1][1].code == "bad_request"


def test_non_streaming_requests_get_one_message() -> None:
    h = Harness()
    d = h.worker("d", "decoder")
    h.submit(max_tokens=3, stream=False)
    h.output(d, tokens("r", [1]))
    h.output(d, tokens("r", [2]))
    assert h.outbox.deltas == []
    h.output(d, tokens("r", [3], "length"))
    (_, only), = h.outbox.deltas
    assert (only.token_ids, only.finish_reason) == ([1, 2, 3], "length")


def test_queue_bound_says_overloaded() -> None:
    h = Harness(max_queued=2)
    for i in range(3):
        h.submit(f"r{i}")
    assert [e.code for _, e in h.outbox.errors] == ["overloaded"]
    assert len(h.core.prefill_queue) == 2


def test_cancel_aborts_on_the_worker() -> None:
    h = Harness()
    h.worker("d", "decoder")
    h.submit()
    h.core.cancel(OTHER_CLIENT, "r", h.now)
    assert "r" in h.core.requests
    h.core.cancel(CLIENT, "r", h.now)
    assert h.outbox.errors[-1][1].code == "cancelled" and h.outbox.aborts == [(b"d", "r")]


def test_outputs_from_a_worker_that_does_not_hold_the_request_are_ignored() -> None:
    h = Harness()
    d1, d2 = h.worker("d1", "decoder"), h.worker("d2", "decoder", kv_capacity_tokens=1)
    h.submit()
    owner, other = (d1, d2) if h.last_work(b"d1") else (d2, d1)
    h.output(other, tokens("r", [99], "length"))
    assert h.core.requests["r"].tokens == [] and h.core.counters["stale_outputs"] == 1
    h.output(owner, tokens("r", [1, 2, 3, 4, 5, 6], "length"))
    assert h.streamed() == [1, 2, 3, 4], "never more than max_tokens"


def test_workers_that_do_not_fit_the_deployment_are_refused_for_good() -> None:
    h = Harness()
    assert h.worker("x", "decoder", model="other") is None
    assert h.worker("y", "chef") is None
    refusals = [body for _, command, body in h.outbox.commands if command is Command.DISCONNECT]
    assert all(body.fatal for body in refusals) and len(refusals) == 2
    assert "not 'other'" in refusals[0].reason and "unknown role" in refusals[1].reason


def test_a_worker_that_registers_again_gets_its_requests_rerouted() -> None:
    h = Harness()
    h.worker("d", "decoder")
    h.submit()
    h.worker("d", "decoder")
    h.core.dispatch(h.now)
    assert [item.request_id for w, item in h.outbox.work_items] == ["r", "r"]
    assert h.core.requests["r"].handovers == 1


def test_finished_requests_do_not_pile_up_behind_their_deadlines() -> None:
    h = Harness()
    d = h.worker("d", "decoder")
    for i in range(5000):
        h.submit(f"r{i}", max_tokens=1)
        h.output(d, tokens(f"r{i}", [1], "length"))
        h.core.expire_requests(h.now)
    assert not h.core.requests
    assert len(h.core.deadlines) <= 1024 + 1, "the deadline heap is rebuilt from live requests"
    assert len(h.records) == 5000 and len(h.core.recent) == 5000
    h.core.expire_requests(h.now + 10_000)
    assert len(h.core.recent) == 0, "recent results expire"


def test_a_request_past_its_ttft_waits_behind_one_that_can_still_meet_it() -> None:
    h = Harness(max_context_tokens=20_000, default_absorb_tokens=100)
    p = h.worker("p", "prefiller")
    h.submit("a", prompt=[1] * 100)
    h.submit("b", prompt=[1] * 50)      # 250-ms target: late by the time the prefiller frees
    h.now += 0.5
    h.submit("c", prompt=[1] * 50)
    assert [i.request_id for w, i in h.outbox.work_items if w == b"p"] == ["a"]
    h.output(p, prefilled("a"))
    assert [i.request_id for w, i in h.outbox.work_items if w == b"p"] == ["a", "c", "b"]


def test_a_request_back_from_a_lost_worker_goes_first() -> None:
    """"a" is long past its TTFT when its prefiller dies; it still goes before on-time "b"."""
    h = Harness(max_context_tokens=20_000, default_absorb_tokens=100)
    p = h.worker("p", "prefiller")
    h.worker("d", "decoder")
    h.submit("a", prompt=[1] * 100)
    h.now += 5.0
    h.submit("b", prompt=[1] * 100)
    h.core.disconnected(p, Disconnect(reason="engine died", fatal=True), h.now)
    h.worker("p2", "prefiller")
    h.core.dispatch(h.now)
    assert h.last_work(b"p2").request_id == "a"
