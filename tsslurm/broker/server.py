"""The broker process's event loop: one thread, one raw zmq.Poller over the frontend ROUTER
(clients), the backend ROUTER (workers) and the tokenizer pool's inproc socket, with a timer heap
for heartbeats, deadlines and periodic hooks. Messages are decoded here and handed to BrokerCore;
what the core queues goes out in batches (one WORK per worker per loop turn, one STREAM per
client per worker OUTPUT).

Bad input never takes the loop down: a malformed or unexpected message gets an ErrorReply
(client) or a DISCONNECT (worker), a counter and a rate-limited log line."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from tsslurm.broker.config import BrokerConfig
from tsslurm.broker.core import BrokerCore
from tsslurm.broker.events import EventHub, WorkerChange
from tsslurm.broker.logs import RateLimitedLog
from tsslurm.broker.outbox import BatchingOutbox
from tsslurm.broker.security import CurveGuard
from tsslurm.broker.store import Store
from tsslurm.broker.timers import TimerHeap
from tsslurm.broker.tokenizing import TokenizerPool
from tsslurm.protocol import Command, Disconnect, Ping, ProtocolError, decode
from tsslurm.statedir import StateDir
from tsslurm.tokenizer import Tokenizer

log = logging.getLogger("tsslurm.broker")

RECV_BATCH = 512
"""Messages taken from one socket per loop turn before the others get a look."""
MAX_POLL_S = 0.2


class Broker:
    def __init__(self, config: BrokerConfig, state: StateDir, *, store: Store | None = None,
                 tokenizer: Tokenizer | None = None, events: EventHub | None = None):
        self.config = config
        self.state = state
        self.context = zmq.Context()
        self.guard = CurveGuard(self.context, state)
        self.frontend = self._router()
        self.backend = self._router()
        self.outbox = BatchingOutbox(self.frontend, self.backend)
        self.store = store
        self.tokenizer_pool = TokenizerPool(self.context, tokenizer) if tokenizer else None
        self.warn = RateLimitedLog(log)
        self.core = BrokerCore(
            config, self.outbox, events=events,
            record=store.put_request if store else None, job=store.put_job if store else None,
            tokenize=self.tokenizer_pool.submit if self.tokenizer_pool else None,
            warn=self.warn.warning)
        self._timers = TimerHeap()
        self._periodic: dict[str, tuple[float, Callable[[float], None]]] = {}
        self._stopping = threading.Event()
        self.client_port = self.worker_port = 0
        self.received = 0
        self._calls: deque[Callable[[float], None]] = deque()
        self._wake_lock = threading.Lock()
        self._woken, self._waker = self._wake_pair()
        self.core.events.subscribe(_log_worker_change, WorkerChange)
        self.every("heartbeat", config.heartbeat_s, self.core.beat)
        self.every("authorized-keys", 2.0, lambda now: self.guard.reload())
        if store is not None:
            self.every("store", 0.2, lambda now: store.hand_over())

    @property
    def events(self) -> EventHub:
        return self.core.events

    def bind(self) -> tuple[int, int]:
        """Bind both sockets (port 0: an ephemeral port); returns (client port, worker port)."""
        self.client_port = _bind(self.frontend, self.config.host, self.config.client_port)
        self.worker_port = _bind(self.backend, self.config.host, self.config.worker_port)
        return self.client_port, self.worker_port

    def every(self, name: str, interval_s: float, callback: Callable[[float], None]) -> None:
        """Run `callback(now)` on the loop every `interval_s` (the autoscaler's tick seam)."""
        self._periodic[name] = (interval_s, callback)
        self._timers.schedule(time.monotonic() + interval_s, name)

    def call_soon(self, callback: Callable[[float], None]) -> None:
        """Run `callback(now)` on the loop soon. Safe from any thread: how code outside the loop
        (a control command, a test) reaches the core, e.g. `core.drain(worker_id, now)`."""
        self._calls.append(callback)
        with self._wake_lock:
            try:
                self._waker.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # wake-ups are pending already

    def request_stop(self) -> None:
        """Thread- and signal-safe: the loop ends within MAX_POLL_S."""
        self._stopping.set()

    def run(self) -> None:
        poller = zmq.Poller()
        handlers: dict[zmq.Socket, Callable[[], None]] = {
            self.frontend: self._drain_frontend, self.backend: self._drain_backend,
            self._woken: self._run_calls}
        if self.tokenizer_pool is not None:
            handlers[self.tokenizer_pool.socket] = self._drain_tokenizer
        for socket in handlers:
            poller.register(socket, zmq.POLLIN)
        while not self._stopping.is_set():
            ready = poller.poll(self._poll_timeout_ms())
            for socket, _ in ready:
                handlers[socket]()
            self._turn_end()

    def _turn_end(self) -> None:
        """Timers, placement, sends: once per loop turn, whatever woke it."""
        try:
            self._run_timers()
            if self.core.dirty:
                self.core.dispatch(time.time())
        except Exception as error:  # noqa: BLE001 - a bug must not end the loop; the log says where
            self._internal_error(error)
        self.outbox.flush()

    def summary(self) -> dict[str, object]:
        """Counts for logs and `tsslurm status`: requests, workers, counters, messages."""
        return {**self.core.summary(), "messages_received": self.received,
                "messages_sent": self.outbox.sent, "messages_dropped": dict(self.outbox.dropped),
                "refused_handshakes": self.guard.refused}

    def close(self) -> None:
        if self.tokenizer_pool is not None:
            self.tokenizer_pool.close()
        self.guard.stop()
        for socket in (self.frontend, self.backend, self._woken, self._waker):
            socket.close(linger=0)
        self.context.term()

    # ---- sockets --------------------------------------------------------------------------------

    def _router(self) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, 1_000_000)
        socket.setsockopt(zmq.RCVHWM, 1_000_000)
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_message_bytes)
        socket.linger = 0
        self.guard.secure(socket)
        return socket

    def _drain_frontend(self) -> None:
        recv, now = self.frontend.recv_multipart, time.time()
        for _ in range(RECV_BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            try:
                self._on_client(frames, now)
            except Exception as error:  # noqa: BLE001 - a bug must cost one request, not the broker
                self._internal_error(error)
                self.core.reject(frames[0], None, "internal", f"internal error: {error}")

    def _drain_backend(self) -> None:
        recv, now = self.backend.recv_multipart, time.time()
        for _ in range(RECV_BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            try:
                self._on_worker(frames, now)
            except Exception as error:  # noqa: BLE001 - a bug must cost one message, not the broker
                self._internal_error(error)

    def _wake_pair(self) -> tuple[zmq.Socket, zmq.Socket]:
        endpoint = f"inproc://tsslurm-broker-calls-{id(self)}"
        woken, waker = self.context.socket(zmq.PULL), self.context.socket(zmq.PUSH)
        woken.bind(endpoint)
        waker.connect(endpoint)
        return woken, waker

    def _run_calls(self) -> None:
        while True:
            try:
                self._woken.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self._calls:
            try:
                self._calls.popleft()(time.time())
            except Exception as error:  # noqa: BLE001 - a failing call must not end the loop
                self._internal_error(error)

    def _drain_tokenizer(self) -> None:
        assert self.tokenizer_pool is not None
        now = time.time()
        for request_id, token_ids, problem in self.tokenizer_pool.results():
            self.core.tokenized(request_id, token_ids, problem, now)

    # ---- messages -------------------------------------------------------------------------------

    def _on_client(self, frames: list[bytes], now: float) -> None:
        identity = frames[0]
        try:
            command, body = decode(frames[1:], max_bytes=self.config.max_message_bytes)
        except ProtocolError as error:
            code = "bad_request" if error.command is Command.SUBMIT else "protocol"
            return self.core.reject(identity, _request_id_of(frames), code, str(error))
        if command is Command.SUBMIT:
            self.core.submit(identity, body, now)
        elif command is Command.CANCEL:
            self.core.cancel(identity, body.request_id, now)
        elif command is Command.PING:
            self.outbox.to_client(identity, Command.PONG, Ping(nonce=body.nonce))
        else:
            self.core.reject(identity, None, "protocol", f"{command.name} is not a client command")

    def _on_worker(self, frames: list[bytes], now: float) -> None:
        identity, core = frames[0], self.core
        worker = core.pool.get(identity)
        try:
            command, body = decode(frames[1:], from_worker=True,
                                   max_bytes=self.config.max_message_bytes)
        except ProtocolError as error:
            return self._refuse_worker(identity, worker, str(error), now)
        if command is Command.OUTPUT and worker is not None:
            core.output(worker, body, now)
            self.outbox.flush_streams()
        elif command is Command.HEARTBEAT and worker is not None:
            core.heartbeat(worker, body, now)
        elif command is Command.READY:
            core.ready(identity, body, now)
        elif command is Command.DISCONNECT and worker is not None:
            core.disconnected(worker, body, now)
        elif worker is None:
            core.counters["unregistered_worker_messages"] += 1
            self.outbox.send(identity, Command.DISCONNECT,
                             Disconnect(reason="not registered: send READY first"))
        else:
            self._refuse_worker(identity, worker, f"{command.name} is not a worker command", now)

    def _refuse_worker(self, identity: bytes, worker: Any, reason: str, now: float) -> None:
        self.core.counters["worker_protocol_errors"] += 1
        self.warn.warning("worker-protocol", "refused a worker message: %s", reason)
        self.outbox.send(identity, Command.DISCONNECT, Disconnect(reason=reason))
        if worker is not None:
            self.core.disconnected(worker, Disconnect(reason=reason), now)

    def _internal_error(self, error: Exception) -> None:
        self.core.counters["internal_errors"] += 1
        self.warn.error("internal", "internal error: %s\n%s", error, traceback.format_exc())

    # ---- timers ---------------------------------------------------------------------------------

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        wait = self._timers.seconds_until_next(now, MAX_POLL_S)
        wait = min(wait, self.core.deadlines.seconds_until_next(time.time(), MAX_POLL_S))
        return max(0, int(wait * 1000 + 0.999))

    def _run_timers(self) -> None:
        now = time.monotonic()
        for name in self._timers.pop_due(now):
            interval_s, callback = self._periodic[name]
            self._timers.schedule(now + interval_s, name)
            callback(time.time())
        self.core.expire_requests(time.time())


def _bind(socket: zmq.Socket, host: str, port: int) -> int:
    if port:
        socket.bind(f"tcp://{host}:{port}")
        return port
    return socket.bind_to_random_port(f"tcp://{host}")


_WORKER_CHANGE_WORDS = {"ready": "ready", "left": "disconnected", "lost": "lost",
                        "draining": "draining"}


def _log_worker_change(event: WorkerChange) -> None:
    log.info("worker %s %s%s (%s on %s)", event.worker_id,
             _WORKER_CHANGE_WORDS.get(event.change, event.change),
             f": {event.reason}" if event.reason else "", event.role, event.partition or "-")


class _RequestRef(msgspec.Struct):
    request_id: str


_request_ref = msgspec.msgpack.Decoder(_RequestRef)


def _request_id_of(frames: list[bytes]) -> str | None:
    """The request id of a SUBMIT or CANCEL whose body is otherwise bad, so the error reaches the
    right request; None when even that cannot be read."""
    if len(frames) != 4 or frames[2] not in (Command.SUBMIT.value, Command.CANCEL.value):
        return None
    try:
        return _request_ref.decode(frames[3]).request_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
