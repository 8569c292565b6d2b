"""The two generation endpoints: a request body becomes a Job (tokenized here, the chat template
applied for chat), and the Job's answer becomes an OpenAI response, streamed as server-sent
events or whole. Errors found before the answer starts get their own HTTP status; an error after
the stream began is sent as an error event."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from tsslurm.errors import UserError
from tsslurm.gateway import responses
from tsslurm.gateway.asgi import SSE_HEADERS, Head, Part, ProducedResponse
from tsslurm.gateway.chat import TemplateError
from tsslurm.gateway.errors import ApiError, bad_request, from_exception
from tsslurm.gateway.generate import Finished, stream_job, whole_job
from tsslurm.gateway.requests import (
    ChatBody,
    CompletionBody,
    Job,
    chat_job,
    chat_messages,
    check_model,
    check_text_length,
    completion_job,
    completion_prompt,
    decode_body,
)
from tsslurm.gateway.responses import StreamFormat
from tsslurm.gateway.service import Gateway

log = logging.getLogger("tsslurm.gateway")

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def completions(gateway: Gateway, data: bytes) -> ProducedResponse:
    started = time.perf_counter()
    body = decode_body(data, CompletionBody)
    check_model(body, gateway.limits)
    prompt = completion_prompt(body)
    if isinstance(prompt, str):
        check_text_length(prompt, gateway.limits)
    ids = gateway.codec.encode(prompt) if isinstance(prompt, str) else prompt
    return _answer(gateway, COMPLETIONS, completion_job(body, ids, gateway.limits), started)


def chat_completions(gateway: Gateway, data: bytes) -> ProducedResponse:
    started = time.perf_counter()
    body = decode_body(data, ChatBody)
    check_model(body, gateway.limits)
    try:
        text = gateway.template.render(chat_messages(body))
    except TemplateError as error:
        raise bad_request(str(error), param="messages") from None
    check_text_length(text, gateway.limits, "messages")
    ids = gateway.codec.encode(text, add_special_tokens=False)
    return _answer(gateway, CHAT, chat_job(body, ids, gateway.limits), started)


def _answer(gateway: Gateway, endpoint: str, job: Job, started: float) -> ProducedResponse:
    gateway.admit()
    chat = endpoint == CHAT
    request_id = responses.new_id(chat)
    parts = _streamed(gateway, endpoint, job, request_id, started) if job.stream \
        else _whole(gateway, endpoint, job, request_id, started)
    return ProducedResponse(_counted(gateway, parts), gateway.metrics.disconnects.inc)


async def _counted(gateway: Gateway, parts: AsyncIterator[Part]) -> AsyncIterator[Part]:
    gateway.in_flight += 1
    gateway.metrics.in_flight.inc()
    try:
        async with contextlib.aclosing(parts):
            async for part in parts:
                yield part
    finally:
        gateway.in_flight -= 1
        gateway.metrics.in_flight.dec()


async def _whole(gateway: Gateway, endpoint: str, job: Job, request_id: str,
                 started: float) -> AsyncIterator[Part]:
    try:
        text, finished = await whole_job(gateway.client, gateway.codec, job, request_id,
                                         gateway.settings.request_timeout_s)
    except Exception as error:  # noqa: BLE001 (every failure becomes an OpenAI error answer)
        for part in _refusal(gateway, endpoint, error):
            yield part
        return
    build = responses.chat_completion if endpoint == CHAT else responses.completion
    body = build(request_id, gateway.limits.model, text, finished.finish_reason, finished.usage)
    _done(gateway, endpoint, finished, started)
    yield Head(200, {"content-type": "application/json", "content-length": str(len(body))})
    yield body


async def _streamed(gateway: Gateway, endpoint: str, job: Job, request_id: str,
                    started: float) -> AsyncIterator[Part]:
    events = stream_job(gateway.client, gateway.codec, job, request_id,
                        gateway.settings.request_timeout_s)
    form = StreamFormat(request_id, gateway.limits.model, endpoint == CHAT, job.include_usage)
    async with contextlib.aclosing(events):
        try:
            first = await anext(events)
        except Exception as error:  # noqa: BLE001 (every failure becomes an OpenAI error answer)
            for part in _refusal(gateway, endpoint, error):
                yield part
            return
        gateway.metrics.answered(endpoint, 200)
        yield Head(200, SSE_HEADERS)
        opening = form.opening() or b""
        if isinstance(first, Finished):
            yield opening + _close(gateway, endpoint, form, first, started)
            return
        gateway.metrics.ttft.observe(time.perf_counter() - started)
        yield opening + form.text(first)
        try:
            async for event in events:
                if isinstance(event, str):
                    yield form.text(event)
                else:
                    yield _close(gateway, endpoint, form, event, started)
        except Exception as error:  # noqa: BLE001 (the stream began: an error event ends it)
            yield responses.error_event(_problem(gateway, error).body())


def _close(gateway: Gateway, endpoint: str, form: StreamFormat, finished: Finished,
           started: float) -> bytes:
    _done(gateway, endpoint, finished, started, count=False)
    return form.closing(finished.finish_reason, finished.usage)


def _done(gateway: Gateway, endpoint: str, finished: Finished, started: float,
          count: bool = True) -> None:
    if count:
        gateway.metrics.answered(endpoint, 200)
    usage = finished.usage
    gateway.metrics.completed(endpoint, usage.prompt_tokens, usage.completion_tokens,
                              time.perf_counter() - started)
    gateway.health.served()


def _refusal(gateway: Gateway, endpoint: str, error: Exception) -> list[Part]:
    problem = _problem(gateway, error)
    gateway.metrics.answered(endpoint, problem.status)
    body = problem.json()
    headers = {"content-type": "application/json", "content-length": str(len(body)),
               **problem.headers()}
    return [Head(problem.status, headers), body]


def _problem(gateway: Gateway, error: Exception) -> ApiError:
    if not isinstance(error, UserError | ApiError):
        log.error("unexpected error while serving a request", exc_info=error)
    problem = from_exception(error)
    if problem.status in (503, 504):
        gateway.health.failed()
    return problem
