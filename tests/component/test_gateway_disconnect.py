"""An HTTP client that hangs up cancels its request all the way to the engine: mid-stream, while
a whole answer is being generated, and while the request still waits in the broker's queue. The
broker runs in this process, so the test reads the workers' own heartbeat stats (requests running
in the engine) and the broker's queue, besides its records."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from gateway_support import metric, running_gateway

pytestmark = pytest.mark.timeout(120)

LONG = 3000
"""Output tokens of a request that would run for 30 s on the mock (10 ms a token)."""


def running_in_engines(d, broker) -> int:
    views = d.on_loop(broker, lambda now: broker.core.pool.views())
    return sum(view.stats.running + view.stats.waiting for view in views)


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def cancelled_record(d, request_id: str):
    wait_until(lambda: request_id in {r.request_id for r in d.records(1)}, 10, "the record")
    records = {r.request_id: r for r in d.records(1)}
    return records[request_id]


def test_closing_a_stream_aborts_the_request_in_the_engine(deployment) -> None:
    d = deployment()
    broker = d.start_broker_in_process()
    d.start_worker("d1", "decode")
    with running_gateway(d) as gateway, httpx.Client(base_url=gateway.url,
                                                     headers=gateway.headers) as client:
        body = {"model": gateway.model, "prompt": "a long story", "max_tokens": LONG,
                "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            request_id = first.split('"id":"', 1)[1].split('"', 1)[0]
            for _ in range(10):
                next(lines)
            wait_until(lambda: running_in_engines(d, broker) == 1, 5, "the engine to run it")
        wait_until(lambda: running_in_engines(d, broker) == 0, 5, "the engine to drop it")
        record = cancelled_record(d, request_id)
        assert record.outcome == "cancelled" and record.output_tokens < LONG / 10
        disconnects = metric(client.get("/metrics").text,
                             "tsslurm_gateway_client_disconnects_total")
        assert disconnects == 1


def test_leaving_before_a_whole_answer_aborts_it(deployment) -> None:
    d = deployment()
    broker = d.start_broker_in_process()
    d.start_worker("d1", "decode")
    with running_gateway(d) as gateway:
        with httpx.Client(base_url=gateway.url, headers=gateway.headers) as client, \
                pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", timeout=1.5,
                        json={"model": gateway.model, "prompt": "x", "max_tokens": LONG})
        wait_until(lambda: running_in_engines(d, broker) == 0, 5, "the engine to drop it")
        records = d.records(1)
    assert [(r.outcome, r.output_tokens < LONG / 10) for r in records] == [("cancelled", True)]


def test_leaving_while_queued_takes_the_request_out_of_the_queue(deployment) -> None:
    d = deployment()
    broker = d.start_broker_in_process()  # no worker: requests wait in the broker's queue
    with running_gateway(d) as gateway:
        with httpx.Client(base_url=gateway.url, headers=gateway.headers) as client, \
                pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", timeout=1.0,
                        json={"model": gateway.model, "max_tokens": 5, "stream": True,
                              "messages": [{"role": "user", "content": "hello"}]})
        queued = lambda: d.on_loop(broker, lambda now: len(broker.core.prefill_queue))
        wait_until(lambda: queued() == 0, 5, "the queue to empty")
        records = d.records(1)
    assert [(r.outcome, r.output_tokens, r.workers) for r in records] == [("cancelled", 0, "")]
