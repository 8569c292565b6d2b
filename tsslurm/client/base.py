"""What both clients share: errors, results, one request's progress (`Call`), streamed pieces
(`Chunker`) and `ClientBase` (finding the deployment, building requests, applying the broker's
messages). No event loop here: the blocking client is sync.py, the asyncio one aio.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import zmq

from tsslurm.errors import UserError
from tsslurm.protocol import (
    Command,
    ErrorReply,
    GenerateRequest,
    ProtocolError,
    Sampling,
    StreamBatch,
    decode,
    encode,
)
from tsslurm.statedir import Endpoint, find_endpoint
from tsslurm.tokenizer import IncrementalDecoder, Tokenizer, load_tokenizer


class ClientError(UserError):
    """A request or connection that failed; the message says why."""


class RequestError(ClientError):
    """The broker failed the request; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.request_id = request_id


class RequestTimeout(ClientError):
    pass


class BrokerUnavailable(ClientError):
    pass


class GenerateResult(msgspec.Struct, kw_only=True):
    request_id: str
    token_ids: list[int]
    text: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    latency_s: float
    stream_messages: int


class StreamChunk(NamedTuple):
    token_ids: list[int]
    text: str | None


class Call:
    """One request's progress; deltas apply by offset, so a resent token is never kept twice."""

    __slots__ = (
        "changed",
        "deadline",
        "done",
        "error",
        "finish_reason",
        "finished_at",
        "first_at",
        "heard",
        "messages",
        "prompt_tokens",
        "request",
        "started",
        "timeout_s",
        "tokens",
    )

    def __init__(self, request: GenerateRequest):
        self.request = request
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.error: ClientError | None = None
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self.finished_at: float | None = None
        self.messages = 0
        self.changed: asyncio.Event | None = None
        self.done: asyncio.Future[None] | None = None
        self.timeout_s = request.deadline_s or 0.0
        self.deadline = float("inf")
        self.heard = time.monotonic()
        """When the broker last said something about this request (the watchdog's clock)."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def apply(self, delta: Any) -> None:
        self.messages += 1
        self.heard = time.monotonic()
        skip = len(self.tokens) - delta.offset
        if delta.token_ids and skip < len(delta.token_ids):
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.tokens.extend(delta.token_ids[max(0, skip):])
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.prompt_tokens = delta.prompt_tokens
            self.finished_at = time.perf_counter()

    def submission(self) -> list[bytes]:
        return encode(Command.SUBMIT, msgspec.structs.replace(self.request,
                                                              resume_from=len(self.tokens)))

    def result(self, tokenizer: Tokenizer | None) -> GenerateResult:
        if self.error is not None:
            raise self.error
        return GenerateResult(
            request_id=self.request.request_id, token_ids=self.tokens,
            text=tokenizer.decode(self.tokens) if tokenizer else None,
            finish_reason=self.finish_reason or "", prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.tokens),
            ttft_s=None if self.first_at is None else self.first_at - self.started,
            latency_s=(self.finished_at or time.perf_counter()) - self.started,
            stream_messages=self.messages)


class Chunker:
    """The new part of a call's tokens (and text, when a tokenizer is at hand) since last time."""

    def __init__(self, tokenizer: Tokenizer | None):
        self._text = IncrementalDecoder(tokenizer) if tokenizer else None
        self._seen = 0

    def take(self, call: Call) -> StreamChunk | None:
        new, self._seen = call.tokens[self._seen:], len(call.tokens)
        if not new:
            return None
        return StreamChunk(new, self._text.push(new) if self._text else None)

    def tail(self) -> StreamChunk | None:
        rest = self._text.flush() if self._text else ""
        return StreamChunk([], rest) if rest else None


class ClientBase:
    def __init__(self, endpoint: Endpoint | None, state_dir: str | Path | None,
                 credentials: str | Path | None, timeout_s: float, reconnects: int,
                 idle_s: float):
        self._find = (lambda: endpoint) if endpoint is not None \
            else (lambda: find_endpoint(state_dir, credentials))
        self.endpoint = self._find()
        self.tokenizer = load_tokenizer(self.endpoint.tokenizer) if self.endpoint.tokenizer else None
        self.timeout_s = timeout_s
        self.reconnects = reconnects
        self.idle_s = idle_s
        self.calls: dict[str, Call] = {}

    def _new_call(self, prompt: str | Sequence[int], max_tokens: int, sampling: Sampling | None,
                  stream: bool, request_id: str | None, timeout_s: float | None) -> Call:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt) if self.tokenizer else None
        else:
            ids = prompt if isinstance(prompt, list) else list(prompt)
        request = GenerateRequest(
            request_id=request_id or uuid.uuid4().hex, max_tokens=max_tokens,
            prompt_token_ids=ids, prompt=None if ids is not None else str(prompt),
            sampling=sampling or Sampling(), stream=stream,
            deadline_s=timeout_s or self.timeout_s)
        call = Call(request)
        call.deadline = time.monotonic() + self._patience(timeout_s)
        return call

    def _patience(self, timeout_s: float | None) -> float:
        """The broker fails a request at its deadline with a clear error; the client gives up on
        its own only if that error does not come."""
        timeout = timeout_s or self.timeout_s
        return timeout + max(1.0, 0.1 * timeout)

    def _socket(self, context: zmq.Context) -> zmq.Socket:
        self.endpoint = self._find()
        socket = context.socket(zmq.DEALER)
        socket.curve_serverkey = self.endpoint.server_public_key
        socket.curve_publickey, socket.curve_secretkey = self.endpoint.client_keys
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.linger = 0
        socket.connect(self.endpoint.address)
        return socket

    def _dispatch(self, frames: list[bytes]) -> list[Call]:
        """Apply one broker message; the calls to wake (streaming ones, finished ones)."""
        try:
            command, body = decode(frames)
        except ProtocolError:
            return []
        touched = []
        if command is Command.STREAM:
            assert isinstance(body, StreamBatch)
            calls = self.calls
            for delta in body.deltas:
                call = calls.get(delta.request_id)
                if call is None or call.finish_reason is not None or call.error is not None:
                    continue
                call.apply(delta)
                if call.changed is not None or call.finish_reason is not None:
                    touched.append(call)
        elif command is Command.ERROR:
            assert isinstance(body, ErrorReply)
            targets = [self.calls[body.request_id]] if body.request_id in self.calls \
                else list(self.calls.values()) if body.request_id is None else []
            for call in targets:
                call.error = RequestError(body.code, body.message, body.request_id)
                touched.append(call)
        return touched

    def _unreachable(self, call: Call) -> ClientError:
        return BrokerUnavailable(f"the broker at {self.endpoint.address} does not answer "
                                 f"(request {call.request.request_id}, {self.reconnects} "
                                 "reconnections tried)")
