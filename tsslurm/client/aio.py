"""The asyncio client: any number of concurrent requests over one socket (see AsyncClient)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Self

import zmq

from tsslurm.client.base import (
    Call,
    Chunker,
    ClientBase,
    GenerateResult,
    RequestTimeout,
    StreamChunk,
)
from tsslurm.frames import send_frames
from tsslurm.protocol import Cancel, Command, Ping, Sampling, encode
from tsslurm.statedir import Endpoint


class AsyncClient(ClientBase):
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
        chunker = Chunker(self.tokenizer)
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

    def _start(self, call: Call) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._watch_socket()
            self._watchdog = asyncio.create_task(self._watch())
        call.done = self._loop.create_future()
        self.calls[call.request.request_id] = call
        self._send(call.submission())

    def _end(self, call: Call) -> None:
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
    def _wake(call: Call) -> None:
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

    async def _check_broker(self, silent: list[Call]) -> None:
        for call in silent:  # idempotent; a broker restarted on the same address starts it afresh
            self._send(call.submission())
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
