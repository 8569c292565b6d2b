"""The gateway's generation responses: produced by an async generator of parts (a Head, then body
bytes) while a second task watches the connection. When the HTTP client leaves - waiting in the
queue, mid-stream or before a whole answer is ready - the producer is cancelled, which cancels
the request at the broker (generate.py). The status line is sent only once the producer knows it,
so an error found before the first token still gets its own HTTP status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from starlette.responses import Response

from tsslurm.gateway.errors import internal

log = logging.getLogger("tsslurm.gateway")

Message = dict[str, Any]


class Head(NamedTuple):
    status: int
    headers: dict[str, str]


Part = Head | bytes

SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
               "x-accel-buffering": "no"}
RAW_SEND = "tsslurm.raw_send"


class RawSend:
    """The outermost ASGI layer: keeps the server's own `send` in the scope, so a produced
    response writes each event without the framework's per-message wrappers (they only track
    whether a response started, for error pages these responses make themselves)."""

    def __init__(self, app: Callable[..., Any]):
        self.app = app

    async def __call__(self, scope: Message, receive: Callable[[], Any],
                       send: Callable[[Message], Any]) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class ProducedResponse(Response):
    def __init__(self, parts: AsyncIterator[Part], on_disconnect: Callable[[], None]):
        super().__init__(status_code=200)
        self._parts = parts
        self._on_disconnect = on_disconnect
        self._started = False

    async def __call__(self, scope: Message, receive: Callable[[], Any],
                       send: Callable[[Message], Any]) -> None:
        pump = asyncio.ensure_future(self._pump(scope.get(RAW_SEND, send)))
        watch = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            left = watch.done() and not pump.done()
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        if left:
            self._on_disconnect()

    async def _pump(self, send: Callable[[Message], Any]) -> None:
        try:
            async with contextlib.aclosing(self._parts) as parts:
                async for part in parts:
                    await self._send_part(send, part)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as error:  # a bug must cost one request, with an answer
            log.exception("gateway response failed")
            await self._fail(send, error)

    async def _send_part(self, send: Callable[[Message], Any], part: Part) -> None:
        if isinstance(part, Head):
            self._started = True
            await send({"type": "http.response.start", "status": part.status,
                        "headers": [(k.encode(), v.encode()) for k, v in part.headers.items()]})
        else:
            await send({"type": "http.response.body", "body": part, "more_body": True})

    async def _fail(self, send: Callable[[Message], Any], error: Exception) -> None:
        if not self._started:
            problem = internal(f"internal error: {type(error).__name__}: {error}")
            body = problem.json()
            await send({"type": "http.response.start", "status": problem.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnect(receive: Callable[[], Any]) -> None:
    """Returns when the client hangs up (the request body was read before: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass
