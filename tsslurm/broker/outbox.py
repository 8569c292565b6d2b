"""Outgoing messages of one loop turn, batched per peer: WorkItems and aborts per worker, token
deltas per client. Sends never block (ROUTER_MANDATORY + NOBLOCK): a peer that is gone or cannot
keep up loses the message and a counter says so; the request state stays in the broker, so a
reconnecting client can still collect everything with a re-SUBMIT."""

from __future__ import annotations

from collections import Counter

import msgspec
import zmq

from tsslurm.frames import send_frames
from tsslurm.protocol import (
    HEADER,
    Abort,
    Command,
    ErrorReply,
    StreamBatch,
    TokenDelta,
    WorkBatch,
    WorkItem,
)

_encode = msgspec.msgpack.Encoder().encode
_STREAM, _ERROR, _WORK, _ABORT = (Command.STREAM.value, Command.ERROR.value, Command.WORK.value,
                                  Command.ABORT.value)


class BatchingOutbox:
    def __init__(self, frontend: zmq.Socket, backend: zmq.Socket):
        self.frontend = frontend
        self.backend = backend
        self.dropped: Counter[str] = Counter()
        self.sent = 0
        self._deltas: dict[bytes, list[TokenDelta]] = {}
        self._work: dict[bytes, list[WorkItem]] = {}
        self._aborts: dict[bytes, list[str]] = {}
        self._controls: list[tuple[zmq.Socket, bytes, bytes, bytes]] = []

    # ---- the core's Outbox interface ------------------------------------------------------------

    def stream(self, client: bytes, delta: TokenDelta) -> None:
        batch = self._deltas.get(client)
        if batch is None:
            self._deltas[client] = [delta]
        else:
            batch.append(delta)

    def error(self, client: bytes, reply: ErrorReply) -> None:
        self._controls.append((self.frontend, client, _ERROR, _encode(reply)))

    def work(self, worker: bytes, item: WorkItem) -> None:
        batch = self._work.get(worker)
        if batch is None:
            self._work[worker] = [item]
        else:
            batch.append(item)

    def abort(self, worker: bytes, request_id: str) -> None:
        self._aborts.setdefault(worker, []).append(request_id)

    def send(self, worker: bytes, command: Command, body: msgspec.Struct) -> None:
        self._controls.append((self.backend, worker, command.value, _encode(body)))

    def to_client(self, client: bytes, command: Command, body: msgspec.Struct) -> None:
        self._controls.append((self.frontend, client, command.value, _encode(body)))

    # ---- flushing -------------------------------------------------------------------------------

    def flush_streams(self) -> None:
        if not self._deltas:
            return
        deltas, self._deltas = self._deltas, {}
        for client, batch in deltas.items():
            self._send(self.frontend, client, _STREAM, _encode(StreamBatch(batch)))

    def flush(self) -> None:
        self.flush_streams()
        if self._work:
            work, self._work = self._work, {}
            for worker, items in work.items():
                self._send(self.backend, worker, _WORK, _encode(WorkBatch(items)))
        if self._aborts:
            aborts, self._aborts = self._aborts, {}
            for worker, ids in aborts.items():
                self._send(self.backend, worker, _ABORT, _encode(Abort(ids)))
        if self._controls:
            controls, self._controls = self._controls, []
            for socket, peer, command, body in controls:
                self._send(socket, peer, command, body)

    def _send(self, socket: zmq.Socket, peer: bytes, command: bytes, body: bytes) -> None:
        try:
            send_frames(socket, (peer, HEADER, command, body))
            self.sent += 1
        except zmq.ZMQError as error:
            reason = "unreachable" if error.errno == zmq.EHOSTUNREACH else "full"
            self.dropped[f"{'client' if socket is self.frontend else 'worker'}_{reason}"] += 1
