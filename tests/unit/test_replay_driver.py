"""The replay's sender with a small honest fake client (an async `generate` that answers after a
set time): requests leave at their arrival times, every answer is measured, and a broker that
stops answering ends the run with the measurements kept. The real client and broker are in
tests/slurm/test_replay_on_slurm.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tsslurm.client import BrokerUnavailable, GenerateResult, RequestError
from tsslurm.replay.driver import replay
from tsslurm.replay.metrics import status_of
from tsslurm.replay.schedule import prompt
from tsslurm.sim.slo import REJECTED, SERVED, UNFINISHED
from tsslurm.sim.trace import make_trace

pytestmark = pytest.mark.timeout(60)


class FakeClient:
    """Answers every request after `service_s`; request ids listed in `fail` get that error."""

    def __init__(self, service_s: float = 0.05, fail: dict[str, Exception] | None = None):
        self.service_s = service_s
        self.fail = fail or {}
        self.calls: list[tuple[str, int, int]] = []

    async def generate(self, tokens: list[int], max_tokens: int, *, request_id: str,
                       timeout_s: float) -> GenerateResult:
        self.calls.append((request_id, len(tokens), max_tokens))
        if request_id in self.fail:
            await asyncio.sleep(0.01)
            raise self.fail[request_id]
        await asyncio.sleep(self.service_s)
        return GenerateResult(request_id=request_id, token_ids=[1] * max_tokens, text=None,
                              finish_reason="length", prompt_tokens=len(tokens),
                              completion_tokens=max_tokens, ttft_s=self.service_s / 2,
                              latency_s=self.service_s, stream_messages=1)


def trace(count: int = 12, gap_s: float = 0.1):
    return make_trace("fake", np.arange(count) * gap_s, np.full(count, 50),
                      np.arange(count) % 5 + 1)


def test_requests_leave_on_schedule_and_every_answer_is_measured() -> None:
    client, planned = FakeClient(), trace()
    run = asyncio.run(replay(client, planned, seed=5))  # type: ignore[arg-type]
    assert run.broker_error is None and run.sent == len(planned)
    assert [m.index for m in run.measured] == list(range(len(planned)))
    lags = np.array([m.sent_s - planned.arrival_s[m.index] for m in run.measured])
    assert (lags >= -1e-6).all() and lags.max() < 0.5  # generous: a busy CI machine
    assert all(m.ttft_s == pytest.approx(0.025) and m.error_code is None for m in run.measured)
    assert [c[2] for c in client.calls] == [int(o) for o in planned.output_tokens]
    assert run.run_s >= planned.span_s + client.service_s
    assert client.calls[3][1] == len(prompt(5, 3, 50))


def test_errors_are_kept_per_request() -> None:
    client = FakeClient(fail={"replay-2": RequestError("too_long", "no")})
    run = asyncio.run(replay(client, trace(4, 0.02)))  # type: ignore[arg-type]
    assert [status_of(m) for m in run.measured] == [SERVED, SERVED, REJECTED, SERVED]


def test_a_dead_broker_stops_the_replay_and_keeps_what_was_measured() -> None:
    dead = BrokerUnavailable("the broker at tcp://x does not answer")
    fail = {f"replay-{i}": dead for i in range(3, 40)}
    client = FakeClient(service_s=0.02, fail=fail)
    run = asyncio.run(replay(client, trace(40, 0.05)))  # type: ignore[arg-type]
    assert run.broker_error is not None and "does not answer" in run.broker_error
    assert run.sent < 40
    statuses = {m.index: status_of(m) for m in run.measured}
    assert [statuses[i] for i in range(3)] == [SERVED] * 3
    assert all(statuses[i] == UNFINISHED for i in statuses if i >= 3)
