"""The broker's logic without sockets: clients' requests, placement through the pure routing
functions, re-routing when a worker is lost or drains, deadlines (workers' lifecycle: the
WorkerLifecycle mixin in lifecycle.py). Handlers take
decoded messages and the time, update the tables and queue outgoing messages on an Outbox; the
socket loop (server.py) owns sockets, decoding, timers and batching.

Queued requests are served in queueing.DeadlineQueue's order (TTFT deadline first, late ones after).
Nothing is lost: a request on a lost worker goes back to the front of the queue and continues
from the tokens already streamed (prompt + generated tokens, max_tokens reduced), so the client
sees one answer without duplicates; after `max_retries` failures it fails with a clear error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from tsslurm.broker import routing
from tsslurm.broker.admission import Limits, check_length, check_request, check_token_ids
from tsslurm.broker.config import BrokerConfig
from tsslurm.broker.events import Arrival, EventHub, Finished, FirstToken
from tsslurm.broker.lifecycle import Outbox, WorkerLifecycle
from tsslurm.broker.queueing import DeadlineQueue, ttft_deadline
from tsslurm.broker.requests import (
    AWAITING_DECODE,
    DECODING,
    DONE,
    FAILED,
    PREFILLING,
    QUEUED,
    RUNNING,
    TOKENIZING,
    UNFINISHED,
    RecentResults,
    Request,
    RequestRecord,
    Result,
)
from tsslurm.broker.store import JobRecord
from tsslurm.broker.timers import TimerHeap
from tsslurm.broker.workers import Worker, WorkerPool
from tsslurm.protocol import ErrorReply, GenerateRequest, OutputBatch, OutputItem, TokenDelta

_STATE_FOR_MODE = {routing.PREFILL: PREFILLING, routing.FULL: RUNNING, routing.DECODE: DECODING}


class BrokerCore(WorkerLifecycle):
    def __init__(self, config: BrokerConfig, outbox: Outbox, *, events: EventHub | None = None,
                 record: Callable[[RequestRecord], None] | None = None,
                 job: Callable[[JobRecord], None] | None = None,
                 tokenize: Callable[[str, str], None] | None = None,
                 warn: Callable[..., None] | None = None):
        self.config = config
        self.limits = Limits(config.model, config.max_context_tokens)
        self.outbox = outbox
        self.events = events or EventHub()
        self.counters: Counter[str] = Counter()
        self.requests: dict[str, Request] = {}
        self.pool = WorkerPool()
        self.prefill_queue: DeadlineQueue[Request] = DeadlineQueue()
        self.decode_queue: DeadlineQueue[Request] = DeadlineQueue()
        self.queued_prefill_tokens = 0
        self.recent = RecentResults(config.recent_ttl_s)
        self.deadlines = TimerHeap()
        self.dirty = False
        """Something changed that may let a queued request be placed (see dispatch)."""
        self._record = record or (lambda record: None)
        self._job = job or (lambda job: None)
        self._tokenize = tokenize
        self._warn = warn or (lambda key, message, *args: None)
        """(kind, message, *args): a rate-limited log line for bad input."""

    # ---- clients ------------------------------------------------------------------------------

    def submit(self, client: bytes, message: GenerateRequest, now: float) -> None:
        existing = self.requests.get(message.request_id)
        if existing is not None:
            return self._attach(client, message, existing)
        result = self.recent.get(message.request_id)
        if result is not None:
            return self._replay(client, message, result)
        rejection = self._refusal(message)
        if rejection is not None:
            return self.reject(client, message.request_id, *rejection)
        request = self._register(client, message, now)
        if message.prompt_token_ids is not None:
            request.prompt = message.prompt_token_ids
            self._admit(request, now)
        else:
            assert self._tokenize is not None and message.prompt is not None
            self._tokenize(request.request_id, message.prompt)

    def _refusal(self, message: GenerateRequest) -> tuple[str, str] | None:
        rejection = check_request(message, self.limits)
        if rejection is None and len(self.prefill_queue) >= self.config.max_queued:
            rejection = "overloaded", (f"{len(self.prefill_queue)} requests are already waiting "
                                       "for a worker; retry later")
        if rejection is None and message.prompt_token_ids is None and self._tokenize is None:
            rejection = ("bad_request", "this deployment has no tokenizer: send prompt_token_ids")
        return rejection

    def _register(self, client: bytes, message: GenerateRequest, now: float) -> Request:
        timeout = min(message.deadline_s or self.config.request_timeout_s,
                      self.config.request_timeout_s)
        request = Request(message.request_id, client, now, message.max_tokens, message.sampling,
                          message.stream, now + timeout)
        self.requests[request.request_id] = request
        self.deadlines.schedule(request.deadline, request.request_id)
        return request

    def tokenized(self, request_id: str, token_ids: list[int] | None, problem: str | None,
                  now: float) -> None:
        request = self.requests.get(request_id)
        if request is None or request.state != TOKENIZING:
            return
        rejection = ("bad_request", f"cannot tokenize the prompt: {problem}") if token_ids is None \
            else check_token_ids(token_ids) or check_length(len(token_ids), request.max_tokens,
                                                            self.limits)
        if rejection is not None:
            return self._fail(request, now, *rejection)
        request.prompt = token_ids  # type: ignore[assignment]
        self._admit(request, now)

    def cancel(self, client: bytes, request_id: str, now: float) -> None:
        request = self.requests.get(request_id)
        if request is not None and request.client == client:
            self._fail(request, now, "cancelled", "cancelled by the client")

    def reject(self, client: bytes, request_id: str | None, code: str, message: str) -> None:
        self.counters[f"rejected_{code}"] += 1
        self._warn(f"rejected-{code}", "refused request %s (%s): %s", request_id, code, message)
        self.outbox.error(client, ErrorReply(code=code, message=message, request_id=request_id))

    def _attach(self, client: bytes, message: GenerateRequest, request: Request) -> None:
        """A re-SUBMIT of a request in flight: the sender becomes its stream's receiver."""
        if message.prompt_token_ids is not None and request.prompt \
                and message.prompt_token_ids != request.prompt:
            return self.reject(client, message.request_id, "bad_request",
                               f"request_id {message.request_id!r} is in use by another request")
        self.counters["resubmitted"] += 1
        if client == request.client:
            return
        request.client = client
        start = message.resume_from
        if request.stream and len(request.tokens) > start:
            request.messages += 1
            self.outbox.stream(client, TokenDelta(request_id=request.request_id,
                                                  token_ids=request.tokens[start:], offset=start))

    def _replay(self, client: bytes, message: GenerateRequest, result: Result) -> None:
        self.counters["replayed"] += 1
        if result.error_code is not None:
            reply = ErrorReply(code=result.error_code, message=result.error or "",
                               request_id=message.request_id)
            return self.outbox.error(client, reply)
        tokens = result.tokens
        start = min(message.resume_from, len(tokens))
        self.outbox.stream(client, TokenDelta(
            request_id=message.request_id, token_ids=tokens[start:], offset=start,
            finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
            completion_tokens=len(tokens)))

    def _admit(self, request: Request, now: float) -> None:
        if len(self.prefill_queue) >= self.config.max_queued:
            return self._fail(request, now, "overloaded", "too many requests waiting; retry later")
        self.events.emit(Arrival(now, request.request_id, len(request.prompt), request.max_tokens))
        self._enqueue(request)

    def _enqueue(self, request: Request, front: bool = False) -> None:
        request.state = QUEUED
        self.queued_prefill_tokens += request.context_tokens
        if front:
            self.prefill_queue.push_urgent(request)
        else:
            self.prefill_queue.push(request, self._ttft_deadline(request))
        self.dirty = True

    # ---- placement ------------------------------------------------------------------------------

    def _ttft_deadline(self, request: Request) -> float:
        return ttft_deadline(self.config.slo, request.arrival, len(request.prompt))

    def dispatch(self, now: float) -> None:
        """Place queued requests in each queue's order while workers have room."""
        self.dirty = False
        workers = self.pool.workers
        prefill_queue = self.prefill_queue
        while prefill_queue:
            request = prefill_queue.head(now)
            placement = routing.place_new(request.context_tokens, request.context_tokens
                                          + request.remaining, workers, self.queued_prefill_tokens)
            if placement is None:
                break
            prefill_queue.pop()
            self.queued_prefill_tokens -= request.context_tokens
            request.path = placement.path
            self._assign(request, placement.worker, placement.mode)  # type: ignore[arg-type]
        decode_queue = self.decode_queue
        while decode_queue:
            request = decode_queue.head(now)
            worker = routing.place_decode(request.context_tokens + request.remaining, workers)
            if worker is None:
                break
            decode_queue.pop()
            self._assign(request, worker, routing.DECODE)

    def _assign(self, request: Request, worker: Worker, mode: str) -> None:
        item = request.work_item(mode)
        tokens = len(item.prompt_token_ids)
        request.charge_prefill = 0 if mode == routing.DECODE else tokens
        request.charge_kv = 0 if mode == routing.PREFILL else tokens + item.max_tokens
        request.state = _STATE_FOR_MODE[mode]
        request.worker = worker
        request.mode = mode
        request.worker_ids.append(worker.worker_id)
        worker.prefill_tokens += request.charge_prefill
        worker.kv_reserved += request.charge_kv
        worker.in_flight[request.request_id] = request
        self.outbox.work(worker.identity, item)

    def _release(self, request: Request) -> None:
        worker = request.worker
        if worker is None:
            return
        worker.prefill_tokens -= request.charge_prefill
        worker.kv_reserved -= request.charge_kv
        del worker.in_flight[request.request_id]
        request.charge_prefill = request.charge_kv = 0
        request.worker = None
        self.dirty = True

    # ---- worker output (the hot path) -----------------------------------------------------------

    def output(self, worker: Worker, batch: OutputBatch, now: float) -> None:
        worker.last_seen = now
        requests, stream = self.requests, self.outbox.stream
        for item in batch.items:
            request = requests.get(item.request_id)
            tokens = item.token_ids
            if request is None or request.worker is not worker:
                self.counters["stale_outputs"] += 1
            elif (tokens and item.finish_reason is None and item.error is None and request.stream
                  and not request.charge_prefill and request.first_token_at is not None
                  and len(request.tokens) + len(tokens) < request.max_tokens):
                offset = len(request.tokens)  # the common case, inlined: a token mid-stream
                request.tokens += tokens
                request.last_token_at = now
                request.messages += 1
                stream(request.client, TokenDelta(request_id=item.request_id, token_ids=tokens,
                                                  offset=offset))
            elif item.error is not None:
                self._interrupt(request, now, retry=True, reason=f"engine error: {item.error}")
            elif request.mode == routing.PREFILL:
                if item.finish_reason is not None:
                    self._prefilled(request, worker, item, now)
            else:
                self._tokens(request, worker, item, now)

    def _tokens(self, request: Request, worker: Worker, item: OutputItem, now: float) -> None:
        tokens = item.token_ids
        offset = len(request.tokens)
        if offset + len(tokens) > request.max_tokens:
            tokens = tokens[:request.max_tokens - offset]
        if tokens:
            if request.charge_prefill:
                worker.prefill_tokens -= request.charge_prefill
                request.charge_prefill = 0
                self.dirty = True
            if request.first_token_at is None:
                request.first_token_at = now
                self.events.emit(FirstToken(now, request.request_id, now - request.arrival))
            request.tokens.extend(tokens)
            request.last_token_at = now
        reason = item.finish_reason
        if reason == "abort":
            self._interrupt(request, now, retry=False, reason="the engine aborted it")
        elif reason is not None:
            self._complete(request, now, reason, tokens, offset)
        elif tokens and request.stream:
            request.messages += 1
            self.outbox.stream(request.client, TokenDelta(request_id=request.request_id,
                                                          token_ids=tokens, offset=offset))

    def _prefilled(self, request: Request, worker: Worker, item: OutputItem, now: float) -> None:
        if not item.kv_transfer_params:
            return self._interrupt(request, now, retry=True,
                                   reason="the prefill returned no kv_transfer_params")
        self._release(request)
        request.kv_params = item.kv_transfer_params
        request.kv_source = worker
        request.state = AWAITING_DECODE
        self.decode_queue.push(request, self._ttft_deadline(request))

    # ---- endings --------------------------------------------------------------------------------

    def _complete(self, request: Request, now: float, reason: str, last: list[int],
                  offset: int) -> None:
        if request.worker is not None:
            request.worker.served += 1
        self._release(request)
        request.state = DONE
        request.finish_reason = reason
        tokens, start = (last, offset) if request.stream else (request.tokens, 0)
        request.messages += 1
        self.outbox.stream(request.client, TokenDelta(
            request_id=request.request_id, token_ids=tokens, offset=start, finish_reason=reason,
            prompt_tokens=len(request.prompt), completion_tokens=len(request.tokens)))
        self._forget(request, now, Result.of(request, now, reason), "ok")

    def _fail(self, request: Request, now: float, code: str, message: str) -> None:
        if request.worker is not None:
            self.outbox.abort(request.worker.identity, request.request_id)
        self._unqueue(request)
        self._release(request)
        request.state = FAILED
        self.counters[f"failed_{code}"] += 1
        if code != "cancelled":
            self._warn(f"failed-{code}", "request %s failed (%s): %s", request.request_id, code,
                       message)
        self.outbox.error(request.client, ErrorReply(code=code, message=message,
                                                     request_id=request.request_id))
        self._forget(request, now, Result.of(request, now, None, code, message), code, message)

    def _forget(self, request: Request, now: float, result: Result, outcome: str,
                error: str | None = None) -> None:
        del self.requests[request.request_id]
        self.recent.add(request.request_id, result)
        record = request.record(now, outcome, error)
        self._record(record)
        self.events.emit(Finished(now, request.request_id, record.input_tokens,
                                  record.output_tokens, outcome, record.path, record.ttft_s,
                                  record.tpot_s, request.retries))

    def _unqueue(self, request: Request) -> None:
        if request.state == QUEUED:
            self.prefill_queue.remove(request)
            self.queued_prefill_tokens -= request.context_tokens
        elif request.state == AWAITING_DECODE:
            self.decode_queue.remove(request)

    def _interrupt(self, request: Request, now: float, *, retry: bool, reason: str) -> None:
        """The request's worker is gone or failed it: continue elsewhere, or fail it."""
        self._unqueue(request)
        self._release(request)
        request.kv_params = request.kv_source = None
        if retry:
            request.retries += 1
        else:
            request.handovers += 1
        finished = request.generation_finished()
        if finished is not None:
            return self._complete(request, now, finished, [], len(request.tokens))
        if request.retries > self.config.max_retries:
            return self._fail(request, now, "unavailable",
                              f"failed on {request.retries} workers; last: {reason}")
        self._enqueue(request, front=True)

    def expire_requests(self, now: float) -> None:
        """Fail requests past their deadline. Deadlines of finished requests stay in the heap
        until due or until it is rebuilt from the live requests (when it holds twice as many)."""
        for request_id in self.deadlines.pop_due(now):
            request = self.requests.get(request_id)
            if request is not None and request.deadline <= now and request.state in UNFINISHED:
                self._fail(request, now, "timeout",
                           f"no complete answer within {request.deadline - request.arrival:.1f} s")
        if len(self.deadlines) > 2 * len(self.requests) + 1024:
            self.deadlines.rebuild((r.deadline, r.request_id) for r in self.requests.values())
        self.recent.expire(now)

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.requests), "queued": len(self.prefill_queue),
                "awaiting_decode": len(self.decode_queue), "workers": self.pool.counts(),
                "counters": dict(self.counters)}
