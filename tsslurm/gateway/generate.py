"""One Job through the broker client (tsslurm.client.AsyncClient): a stream of text pieces ending
with a Finished, or a whole answer. Text comes from the gateway's own streaming detokenizer and
stop-string matcher. Leaving a stream early (a stop string, a client that hung up, a cancelled
task) closes the client's stream, and the client cancels the request at the broker, which aborts
it on the engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import NamedTuple

from tsslurm.client import AsyncClient
from tsslurm.gateway.codec import TextCodec
from tsslurm.gateway.detokenize import stream_decoder
from tsslurm.gateway.requests import Job
from tsslurm.gateway.responses import Usage
from tsslurm.gateway.stops import StopMatcher


class Finished(NamedTuple):
    finish_reason: str
    usage: Usage


Event = str | Finished


async def stream_job(client: AsyncClient, codec: TextCodec, job: Job, request_id: str,
                     timeout_s: float) -> AsyncIterator[Event]:
    """Non-empty text pieces as tokens arrive, then one Finished.

    The finish reason is "stop" when a stop string ended the answer or the engine stopped before
    max_tokens (an end-of-sequence or stop token), else "length"."""
    decoder = stream_decoder(codec)
    stops = StopMatcher(job.stop) if job.stop else None
    produced = 0
    chunks = client.stream(job.prompt_ids, job.max_tokens, job.sampling, request_id=request_id,
                           timeout_s=timeout_s)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            produced += len(chunk.token_ids)
            piece = decoder.push(chunk.token_ids)
            if stops is not None:
                piece = stops.push(piece)
            if piece:
                yield piece
            if stops is not None and stops.stopped:
                break
    stopped = stops is not None and stops.stopped
    if not stopped:
        tail = decoder.flush()
        if stops is not None:
            tail = stops.push(tail)
            stopped = stops.stopped
            tail += stops.flush()
        if tail:
            yield tail
    reason = "stop" if stopped or produced < job.max_tokens else "length"
    yield Finished(reason, Usage(len(job.prompt_ids), produced))


async def whole_job(client: AsyncClient, codec: TextCodec, job: Job, request_id: str,
                    timeout_s: float) -> tuple[str, Finished]:
    """The whole answer. Without stop strings the broker sends it in one message at the end."""
    if job.stop:
        return await _collect(stream_job(client, codec, job, request_id, timeout_s))
    result = await client.generate(job.prompt_ids, job.max_tokens, job.sampling,
                                   request_id=request_id, timeout_s=timeout_s, stream=False)
    usage = Usage(result.prompt_tokens or len(job.prompt_ids), result.completion_tokens)
    return codec.decode(result.token_ids), Finished(result.finish_reason, usage)


async def _collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
    pieces: list[str] = []
    async for event in events:
        if isinstance(event, Finished):
            return "".join(pieces), event
        pieces.append(event)
    raise RuntimeError("the answer ended without its Finished event")
