"""The blocking client: one request at a time per instance, on a plain DEALER socket it polls."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
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


class Client(ClientBase):
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
        chunker = Chunker(self.tokenizer)
        for _ in self._run(call, timeout_s):
            if chunk := chunker.take(call):
                yield chunk
        call.result(None)
        if tail := chunker.tail():
            yield tail

    def _run(self, call: Call, timeout_s: float | None) -> Iterator[None]:
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
            elif not self._probe(call):
                failures += 1
                if failures > self.reconnects:
                    raise self._unreachable(call)
                self._sock.close(linger=0)
                self._sock = self._socket(self._context)
                self._send(call.submission())

    def _probe(self, call: Call) -> bool:
        """A silent request: re-SUBMIT it (idempotent: a broker that knows it ignores this; one
        restarted on the same address starts it afresh), then check that the broker answers."""
        self._send(call.submission())
        return self._alive()

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
