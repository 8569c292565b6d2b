"""The tsslurm client library: `Client` (blocking) and `AsyncClient` (asyncio, many concurrent
requests on one socket). Both find a deployment through its state directory's connection file, a
credentials file handed to another user, or an explicit Endpoint.

`Endpoint` and `find_endpoint` (re-exported from tsslurm.statedir) say where a deployment is.
Requests travel as token ids when the deployment's tokenizer is at hand (text otherwise: the
broker tokenizes). Answers are detokenized when it is. A request that hears nothing for a while
pings the broker; if the broker does not answer, the client reconnects (a new socket, the
connection file read again) and re-submits with the same request id and the number of tokens it
already holds, so the answer continues where it stopped, without duplicates. Failures raise
ClientError subclasses with a message, never a bare traceback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Self

import msgspec
import zmq

from tsslurm.errors import UserError
from tsslurm.frames import send_frames
from tsslurm.protocol import (
    Cancel,
    Command,
    ErrorReply,
    GenerateRequest,
    Ping,
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


class _Call:
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


class _Chunker:
    """The new part of a call's tokens (and text, when a tokenizer is at hand) since last time."""

    def __init__(self, tokenizer: Tokenizer | None):
        self._text = IncrementalDecoder(tokenizer) if tokenizer else None
        self._seen = 0

    def take(self, call: _Call) -> StreamChunk | None:
        new, self._seen = call.tokens[self._seen:], len(call.tokens)
        if not new:
            return None
        return StreamChunk(new, self._text.push(new) if self._text else None)

    def tail(self) -> StreamChunk | None:
        rest = self._text.flush() if self._text else ""
        return StreamChunk([], rest) if rest else None


class _Base:
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
        self.calls: dict[str, _Call] = {}

    def _new_call(self, prompt: str | Sequence[int], max_tokens: int, sampling: Sampling | None,
                  stream: bool, request_id: str | None, timeout_s: float | None) -> _Call:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt) if self.tokenizer else None
        else:
            ids = prompt if isinstance(prompt, list) else list(prompt)
        request = GenerateRequest(
            request_id=request_id or uuid.uuid4().hex, max_tokens=max_tokens,
            prompt_token_ids=ids, prompt=None if ids is not None else str(prompt),
            sampling=sampling or Sampling(), stream=stream,
            deadline_s=timeout_s or self.timeout_s)
        call = _Call(request)
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

    def _dispatch(self, frames: list[bytes]) -> list[_Call]:
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

    def _unreachable(self, call: _Call) -> ClientError:
        return BrokerUnavailable(f"the broker at {self.endpoint.address} does not answer "
                                 f"(request {call.request.request_id}, {self.reconnects} "
                                 "reconnections tried)")


class Client(_Base):
    """Blocking client; one request at a time per instance (use AsyncClient for concurrency)."""

    def __init__(self, endpoint: Endpoint | None = None, *, state_dir: str | Path | None = None,
                 credentials: str | Path | None = None, timeout_s: float = 600.0,
                 reconnects: int = 3, idle_s: float = 5.0):
        super().__init__(endpoint, state_dir, credentials, timeout_s, reconnects, idle_s)
        self._context = zmq.Context()
        self._sock = self._socket(self._context)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128,
                 sampling: Sampling | None = None, *, request_id: str | None = None,
                 timeout_s: float | None = None) -> GenerateResult:
        call = self._new_call(prompt, max_tokens, sampling, False, request_id, timeout_s)
        for _ in self._run(call, timeout_s):
            pass
        return call.result(self.tokenizer)

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 128,
               sampling: Sampling | None = None, *, request_id: str | None = None,
               timeout_s: float | None = None) -> Iterator[StreamChunk]:
        call = self._new_call(prompt, max_tokens, sampling, True, request_id, timeout_s)
        chunker = _Chunker(self.tokenizer)
        for _ in self._run(call, timeout_s):
            if chunk := chunker.take(call):
                yield chunk
        call.result(None)
        if tail := chunker.tail():
            yield tail

    def _run(self, call: _Call, timeout_s: float | None) -> Iterator[None]:
        deadline = time.monotonic() + self._patience(timeout_s)
        self.calls = {call.request.request_id: call}
        self._send(call.submission())
        failures = 0
        while not call.finished:
            if time.monotonic() > deadline:
                self._send(encode(Command.CANCEL, Cancel(call.request.request_id)))
                raise RequestTimeout(f"no complete answer within {timeout_s or self.timeout_s} s")
            if self._sock.poll(int(self.idle_s * 1000)):
                held = len(call.tokens)
                self._dispatch(self._sock.recv_multipart())
                if len(call.tokens) != held:
                    yield None
            elif not self._alive():
                failures += 1
                if failures > self.reconnects:
                    raise self._unreachable(call)
                self._sock.close(linger=0)
                self._sock = self._socket(self._context)
                self._send(call.submission())

    def _alive(self) -> bool:
        if not self._send(encode(Command.PING, Ping(nonce=1))):
            time.sleep(self.idle_s)
            return False
        until = time.monotonic() + self.idle_s
        while (left := until - time.monotonic()) > 0 and self._sock.poll(int(left * 1000) + 1):
            frames = self._sock.recv_multipart()
            if len(frames) == 3 and frames[1] == Command.PONG.value:
                return True
            self._dispatch(frames)
        return False

    def _send(self, frames: list[bytes]) -> bool:
        """False when the broker is not connected (e.g. it refused this client's key)."""
        try:
            send_frames(self._sock, frames)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self._sock.close(linger=0)
        self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client: any number of concurrent requests over one socket. The event loop
    watches the socket's descriptor and one function takes every message, in order (also right
    after each send, which may consume the descriptor's edge-triggered wake-up); one watchdog task
    pings the broker for requests that heard nothing for `idle_s`, reconnects (re-submitting
    them) when it does not answer, and fails requests past their deadline. A request given up
    early (its task cancelled, its stream closed) is cancelled at the broker at once."""

    def __init__(self, endpoint: Endpoint | None = None, *, state_dir: str | Path | None = None,
                 credentials: str | Path | None = None, timeout_s: float = 600.0,
                 reconnects: int = 3, idle_s: float = 5.0):
        super().__init__(endpoint, state_dir, credentials, timeout_s, reconnects, idle_s)
        self._context = zmq.Context()
        self._sock = self._socket(self._context)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pong: asyncio.Future[None] | None = None
        self._failures = 0
        self.generation = 0
        self.received = 0
        """Messages taken from the broker (every kind), for measurements."""

    async def generate(self, prompt: str | Sequence[int], max_tokens: int = 128,
                       sampling: Sampling | None = None, *, request_id: str | None = None,
                       timeout_s: float | None = None, stream: bool = True) -> GenerateResult:
        """`stream=True` has the broker stream tokens as they come (collected here)."""
        call = self._new_call(prompt, max_tokens, sampling, stream, request_id, timeout_s)
        self._start(call)
        try:
            await call.done  # type: ignore[misc]
        finally:
            self._end(call)
        return call.result(self.tokenizer)

    async def stream(self, prompt: str | Sequence[int], max_tokens: int = 128,
                     sampling: Sampling | None = None, *, request_id: str | None = None,
                     timeout_s: float | None = None) -> AsyncIterator[StreamChunk]:
        call = self._new_call(prompt, max_tokens, sampling, True, request_id, timeout_s)
        call.changed = asyncio.Event()
        chunker = _Chunker(self.tokenizer)
        self._start(call)
        try:
            while not call.finished:
                await call.changed.wait()
                call.changed.clear()
                if chunk := chunker.take(call):
                    yield chunk
            if chunk := chunker.take(call):
                yield chunk
        finally:  # closing the stream early cancels the request at once
            self._end(call)
        call.result(None)
        if tail := chunker.tail():
            yield tail

    def _start(self, call: _Call) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._watch_socket()
            self._watchdog = asyncio.create_task(self._watch())
        call.done = self._loop.create_future()
        self.calls[call.request.request_id] = call
        self._send(call.submission())

    def _end(self, call: _Call) -> None:
        """The caller is done with `call`: forget it, and cancel it at the broker unless it got
        its whole answer (given up early, timed out here)."""
        self.calls.pop(call.request.request_id, None)
        if call.finish_reason is None:
            self._send(encode(Command.CANCEL, Cancel(call.request.request_id)))

    def _watch_socket(self) -> None:
        assert self._loop is not None
        self._loop.add_reader(self._sock.getsockopt(zmq.FD), self._take_all)
        self._take_all()

    def _take_all(self) -> None:
        """Every message waiting, in order (until the socket says there is none: that also
        re-arms its descriptor)."""
        recv, take = self._sock.recv_multipart, self._take
        while True:
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            take(frames)

    def _take(self, frames: list[bytes]) -> None:
        self.received += 1
        if len(frames) == 3 and frames[1] == Command.PONG.value:
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(None)
            return
        for call in self._dispatch(frames):
            self._wake(call)

    @staticmethod
    def _wake(call: _Call) -> None:
        if call.changed is not None:
            call.changed.set()
        if call.finished and call.done is not None and not call.done.done():
            call.done.set_result(None)

    def _send(self, frames: list[bytes]) -> bool:
        """False when the broker is not connected (e.g. it refused this client's key)."""
        try:
            send_frames(self._sock, frames)
        except zmq.Again:
            return False
        if self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._take_all()
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_s / 2))
            now = time.monotonic()
            silent = []
            for call in list(self.calls.values()):
                if call.finished:
                    continue
                if now > call.deadline:
                    call.error = RequestTimeout(f"no complete answer within {call.timeout_s} s")
                    self._wake(call)
                elif now - call.heard > self.idle_s:
                    silent.append(call)
            if silent:
                await self._check_broker(silent)

    async def _check_broker(self, silent: list[_Call]) -> None:
        if await self._alive():
            self._failures = 0
            for call in silent:
                call.heard = time.monotonic()
            return
        self._failures += 1
        if self._failures <= self.reconnects:
            self._reconnect()
            return
        for call in silent:
            call.error = self._unreachable(call)
            self._wake(call)
        self._failures = 0

    async def _alive(self) -> bool:
        """Ping the broker and wait up to idle_s for its answer."""
        assert self._loop is not None
        self._pong = self._loop.create_future()
        if not self._send(encode(Command.PING, Ping(nonce=self.generation))):
            await asyncio.sleep(self.idle_s)
            return False
        try:
            await asyncio.wait_for(self._pong, self.idle_s)
            return True
        except TimeoutError:
            return False

    def _reconnect(self) -> None:
        """A new socket (the connection file read again); every unfinished request re-submitted
        with the tokens it holds, so answers continue where they stopped."""
        self._close_socket()
        self._sock = self._socket(self._context)
        self.generation += 1
        self._watch_socket()
        for call in list(self.calls.values()):
            if not call.finished:
                call.heard = time.monotonic()
                self._send(call.submission())

    def _close_socket(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        self._sock.close(linger=0)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        self._close_socket()
        self._context.term()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
