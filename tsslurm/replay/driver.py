"""The replay's sender: every request of a prepared trace goes out through one AsyncClient at its
arrival time (measured from the replay's start), as its own task, so a slow answer never delays a
later send. Each request's TTFT and latency are the client's own measurements.

When the broker stops answering (the client has reconnected and given up), sending stops, the
requests still out are cancelled and counted unfinished, and the run reports why: the requests
measured so far are kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tsslurm.client import AsyncClient, BrokerUnavailable, RequestError, RequestTimeout
from tsslurm.client.base import ClientError
from tsslurm.replay.metrics import Measured
from tsslurm.replay.schedule import due, max_tokens, prompt
from tsslurm.sim.trace import Trace

TICK_S = 0.05
"""Longest sleep of the send loop (it also notices a dead broker this often)."""


@dataclass
class ReplayRun:
    measured: list[Measured]
    started_at: float
    """Wall-clock time (time.time()) of the replay's start: trace time 0."""
    run_s: float
    """From the start until the last answer (or until the run gave up)."""
    broker_error: str | None = None
    sent: int = 0


@dataclass
class _State:
    done: int = 0
    failed: int = 0
    broker_error: str | None = None
    measured: list[Measured] = field(default_factory=list)


async def replay(client: AsyncClient, trace: Trace, *, seed: int = 0, timeout_s: float = 600.0,
                 progress: Callable[[int, int, float], None] | None = None,
                 request_prefix: str = "replay") -> ReplayRun:
    """Send every request of `trace` at its arrival time; wait for every answer."""
    state = _State()
    started_at, origin = time.time(), time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    arrival = trace.arrival_s
    sent = 0
    while sent < len(trace) and state.broker_error is None:
        elapsed = time.perf_counter() - origin
        upto = due(arrival, sent, elapsed)
        for index in range(sent, upto):
            tasks.append(asyncio.create_task(_one(client, trace, index, seed, timeout_s, origin,
                                                  state, f"{request_prefix}-{index}")))
        sent = upto
        if progress is not None:
            progress(sent, state.done, elapsed)
        wait = float(arrival[sent]) - (time.perf_counter() - origin) if sent < len(trace) else 0
        await asyncio.sleep(min(max(wait, 0.0), TICK_S))
    await _finish(tasks, state, origin, progress, sent)
    run_s = time.perf_counter() - origin
    return ReplayRun(sorted(state.measured, key=lambda m: m.index), started_at, run_s,
                     state.broker_error, sent)


async def _finish(tasks: list[asyncio.Task[None]], state: _State, origin: float,
                  progress: Callable[[int, int, float], None] | None, sent: int) -> None:
    """Wait for the answers; once the broker is gone, cancel what is still out."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
        if progress is not None:
            progress(sent, state.done, time.perf_counter() - origin)
        if state.broker_error is not None:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return


async def _one(client: AsyncClient, trace: Trace, index: int, seed: int, timeout_s: float,
               origin: float, state: _State, request_id: str) -> None:
    tokens = prompt(seed, index, int(trace.input_tokens[index]))
    sent_s = time.perf_counter() - origin
    try:
        result = await client.generate(tokens, max_tokens(int(trace.output_tokens[index])),
                                       request_id=request_id, timeout_s=timeout_s)
        measured = Measured(index, sent_s, result.ttft_s, result.latency_s,
                            result.completion_tokens)
    except asyncio.CancelledError:
        state.measured.append(Measured(index, sent_s, error_code="unfinished"))
        raise
    except BrokerUnavailable as error:
        state.broker_error = state.broker_error or str(error)
        measured = Measured(index, sent_s, error_code="unfinished")
    except RequestTimeout:
        measured = Measured(index, sent_s, error_code="unfinished")
    except RequestError as error:
        measured = Measured(index, sent_s, error_code=error.code)
    except ClientError as error:
        measured = Measured(index, sent_s, error_code=type(error).__name__)
    state.measured.append(measured)
    state.done += 1

