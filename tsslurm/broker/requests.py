"""The broker's request table: one mutable Request per request in flight (states below), the
recently finished results a reconnecting client can still collect, and the completed-request
record persisted to SQLite. No I/O, no clock (the broker passes times in).

States: tokenizing -> queued -> prefilling -> awaiting_decode -> decoding -> done
                               queued -> running ("full" on one worker)  -> done
        any unfinished state -> queued again when its worker is lost (continuing from the tokens
        already streamed), or -> failed (timeout, retries exhausted, cancelled)."""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import Any

import msgspec

from tsslurm.protocol import Sampling, WorkItem

TOKENIZING, QUEUED, PREFILLING, AWAITING_DECODE = "tokenizing", "queued", "prefilling", "awaiting_decode"
DECODING, RUNNING, DONE, FAILED = "decoding", "running", "done", "failed"
UNFINISHED = frozenset({TOKENIZING, QUEUED, PREFILLING, AWAITING_DECODE, DECODING, RUNNING})
ON_WORKER = frozenset({PREFILLING, DECODING, RUNNING})


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One completed (or failed) request, as persisted (tsslurm/broker/store.py)."""

    request_id: str
    arrival: float
    input_tokens: int
    max_tokens: int
    output_tokens: int
    first_token_at: float | None
    finished_at: float
    path: str
    workers: str
    """Worker ids that served it, in order, comma-separated."""
    retries: int
    handovers: int
    outcome: str
    finish_reason: str | None = None
    error: str | None = None
    stream_messages: int = 0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_at is None or self.output_tokens < 2:
            return None
        return (self.finished_at - self.first_token_at) / (self.output_tokens - 1)


class Request:
    """A request in flight. Mutated only by the broker core."""

    __slots__ = (
        "arrival",
        "charge_kv",
        "charge_prefill",
        "client",
        "deadline",
        "finish_reason",
        "first_token_at",
        "handovers",
        "kv_params",
        "kv_source",
        "last_token_at",
        "max_tokens",
        "messages",
        "mode",
        "path",
        "prompt",
        "request_id",
        "retries",
        "sampling",
        "state",
        "stream",
        "tokens",
        "worker",
        "worker_ids",
    )

    def __init__(self, request_id: str, client: bytes, arrival: float, max_tokens: int,
                 sampling: Sampling, stream: bool, deadline: float):
        self.request_id = request_id
        self.client = client
        self.arrival = arrival
        self.prompt: list[int] = []
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stream = stream
        self.deadline = deadline
        self.state = TOKENIZING
        self.tokens: list[int] = []
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.path = ""
        self.worker: Any = None
        self.mode = ""
        self.kv_params: dict[str, Any] | None = None
        self.kv_source: Any = None
        self.charge_prefill = 0
        self.charge_kv = 0
        self.worker_ids: list[str] = []
        self.retries = 0
        self.handovers = 0
        self.messages = 0
        self.finish_reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.tokens)

    @property
    def context_tokens(self) -> int:
        """What the next worker must prefill: the prompt plus the tokens already generated."""
        return len(self.prompt) + len(self.tokens)

    def work_item(self, mode: str) -> WorkItem:
        prompt = self.prompt + self.tokens if self.tokens else self.prompt
        return WorkItem(request_id=self.request_id, mode=mode, prompt_token_ids=prompt,
                        max_tokens=1 if mode == "prefill" else self.remaining,
                        sampling=self.sampling, kv_transfer_params=self.kv_params)

    def generation_finished(self) -> str | None:
        """The finish reason the tokens so far imply ("length", "stop"), else None."""
        if self.remaining <= 0:
            return "length"
        if self.tokens and self.tokens[-1] in self.sampling.stop_token_ids:
            return "stop"
        return None

    def record(self, now: float, outcome: str, error: str | None = None) -> RequestRecord:
        return RequestRecord(
            request_id=self.request_id, arrival=self.arrival, input_tokens=len(self.prompt),
            max_tokens=self.max_tokens, output_tokens=len(self.tokens),
            first_token_at=self.first_token_at, finished_at=now, path=self.path,
            workers=",".join(self.worker_ids), retries=self.retries, handovers=self.handovers,
            outcome=outcome, finish_reason=self.finish_reason, error=error,
            stream_messages=self.messages)


class Result(msgspec.Struct, frozen=True, gc=False):
    """A finished request kept for a while, for a client that re-submits it after a reconnect.
    Its tokens are packed (4 bytes each; ids are < 2**31 by the protocol) and it is untracked by
    the garbage collector: tens of thousands of them cost little memory and no collection pauses."""

    finished_at: float
    prompt_tokens: int
    packed_tokens: bytes
    finish_reason: str | None = None
    error_code: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, request: Request, now: float, finish_reason: str | None = None,
           error_code: str | None = None, error: str | None = None) -> Result:
        return cls(now, len(request.prompt), array("I", request.tokens).tobytes(), finish_reason,
                   error_code, error)

    @property
    def tokens(self) -> list[int]:
        return array("I", self.packed_tokens).tolist()


class RecentResults:
    def __init__(self, ttl_s: float, max_entries: int = 50_000):
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._results: OrderedDict[str, Result] = OrderedDict()

    def add(self, request_id: str, result: Result) -> None:
        self._results[request_id] = result
        while len(self._results) > self._max_entries:
            self._results.popitem(last=False)

    def get(self, request_id: str) -> Result | None:
        return self._results.get(request_id)

    def expire(self, now: float) -> None:
        results = self._results
        while results:
            oldest = next(iter(results.values()))
            if now - oldest.finished_at < self._ttl_s:
                break
            results.popitem(last=False)

    def __len__(self) -> int:
        return len(self._results)
