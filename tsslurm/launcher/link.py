"""The worker's connection to the broker, on its own thread: a CURVE DEALER socket, heartbeats both
ways, reconnection. The engine side (an asyncio loop, worker.py) talks to it through two inproc
PAIR pipes, so socket I/O never waits for the engine and the engine never waits for the network.

- engine -> link: protocol frames to forward, or local controls: [b"@ready", READY frames] (send
  it now and after every reconnect), [b"@stop"] (flush and end).
- link -> engine: the broker's WORK / ABORT / DRAIN / fatal DISCONNECT frames, and [b"@reset"]
  when the link re-registered (after the broker went silent or asked for it): everything the
  engine still holds was re-routed by the broker and must be aborted.
Heartbeats carry `stats_body`, the latest WorkerStats the engine side encoded."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import zmq
import zmq.asyncio

from tsslurm.protocol import HEADER, Command, Disconnect, ProtocolError, WorkerStats, decode, encode
from tsslurm.statedir import Keypair

log = logging.getLogger("tsslurm.launcher")

READY, STOP, RESET = b"@ready", b"@stop", b"@reset"
_HEARTBEAT, _DISCONNECT = Command.HEARTBEAT.value, Command.DISCONNECT.value
_counter = itertools.count()


class BrokerTarget(NamedTuple):
    address: str
    server_public_key: bytes
    client_keys: Keypair


class BrokerLink:
    def __init__(self, context: zmq.Context, locate: Callable[[], BrokerTarget],
                 heartbeat_s: float, liveness: int):
        self.context = context
        self._locate = locate
        self._heartbeat_s = heartbeat_s
        self._expiry_s = heartbeat_s * liveness
        self.stats_body: bytes = encode(Command.HEARTBEAT, WorkerStats())[2]
        self.reconnects = 0
        name = f"inproc://tsslurm-link-{id(self)}-{next(_counter)}"
        self._to_link_endpoint, self._to_engine_endpoint = f"{name}-in", f"{name}-out"
        self.outbox = _pair(context, self._to_link_endpoint, bind=True)
        """Engine side: frames for the broker (send from the engine's thread only)."""
        self.inbox = _pair(zmq.asyncio.Context.shadow(context), self._to_engine_endpoint, bind=True)
        """Engine side (asyncio): frames from the broker and link controls."""
        self._thread = threading.Thread(target=self._run, name="tsslurm-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ready(self, frames: list[bytes]) -> None:
        self.outbox.send_multipart([READY, *frames])

    def send(self, frames: list[bytes]) -> None:
        self.outbox.send_multipart(frames)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what the engine side sent, then end the thread and close the pipes."""
        if self._thread.is_alive():
            self.outbox.send_multipart([STOP])
            self._thread.join(timeout_s)
        self.outbox.close(linger=0)
        self.inbox.close(linger=0)

    # ---- the link thread ------------------------------------------------------------------------

    def _run(self) -> None:
        from_engine = _pair(self.context, self._to_link_endpoint, bind=False)
        to_engine = _pair(self.context, self._to_engine_endpoint, bind=False)
        state = _LinkState()
        poller = zmq.Poller()
        poller.register(from_engine, zmq.POLLIN)
        try:
            while self._turn(poller, from_engine, to_engine, state):
                pass
        finally:
            if state.dealer is not None:
                state.dealer.close(linger=2000)
            from_engine.close(linger=0)
            to_engine.close(linger=0)

    def _turn(self, poller: zmq.Poller, from_engine: zmq.Socket, to_engine: zmq.Socket,
              state: _LinkState) -> bool:
        timeout_ms = max(1, int(1000 * (state.next_beat - time.monotonic()))) \
            if state.dealer is not None else int(1000 * self._heartbeat_s)
        events = dict(poller.poll(timeout_ms))
        if from_engine in events and not self._from_engine(from_engine, poller, to_engine, state):
            return False
        if state.dealer is not None and state.dealer in events:
            self._from_broker(state, to_engine)
        self._keep_alive(poller, to_engine, state)
        return True

    def _from_engine(self, socket: zmq.Socket, poller: zmq.Poller, to_engine: zmq.Socket,
                     state: _LinkState) -> bool:
        for frames in _drain(socket):
            if frames[0] == READY:
                state.ready = frames[1:]
                self._connect(poller, to_engine, state, reset=False)
            elif frames[0] == STOP:
                return False
            elif state.dealer is not None:
                state.dealer.send_multipart(frames)
        return True

    def _from_broker(self, state: _LinkState, to_engine: zmq.Socket) -> None:
        assert state.dealer is not None
        for frames in _drain(state.dealer):
            state.heard = time.monotonic()
            if len(frames) == 3 and frames[1] == _HEARTBEAT:
                continue
            if len(frames) == 3 and frames[1] == _DISCONNECT and not _is_fatal(frames):
                log.warning("the broker asked this worker to register again")
                to_engine.send_multipart([RESET])
                state.dealer.send_multipart(state.ready)
                continue
            to_engine.send_multipart(frames)

    def _keep_alive(self, poller: zmq.Poller, to_engine: zmq.Socket, state: _LinkState) -> None:
        now = time.monotonic()
        if state.ready and state.dealer is None and now >= state.next_beat:
            self._connect(poller, to_engine, state, reset=False)
        if state.dealer is None:
            return
        if now - state.heard > self._expiry_s:
            log.warning("no heartbeat from the broker for %.1f s: reconnecting", now - state.heard)
            self._connect(poller, to_engine, state, reset=True)
        elif now >= state.next_beat:
            state.dealer.send_multipart((HEADER, _HEARTBEAT, self.stats_body))
            state.next_beat = now + self._heartbeat_s

    def _connect(self, poller: zmq.Poller, to_engine: zmq.Socket, state: _LinkState,
                 reset: bool) -> None:
        if state.dealer is not None:
            poller.unregister(state.dealer)
            state.dealer.close(linger=0)
            state.dealer = None
            self.reconnects += 1
        if reset:
            to_engine.send_multipart([RESET])
        now = time.monotonic()
        state.next_beat = now + self._heartbeat_s
        try:
            target = self._locate()
        except Exception as error:  # the broker is restarting: its connection file is missing
            log.warning("cannot locate the broker (%s); retrying", error)
            return
        state.dealer = _dealer(self.context, target)
        poller.register(state.dealer, zmq.POLLIN)
        state.dealer.send_multipart(state.ready)
        state.heard = now


class _LinkState:
    __slots__ = ("dealer", "heard", "next_beat", "ready")

    def __init__(self) -> None:
        self.dealer: zmq.Socket | None = None
        self.ready: list[bytes] = []
        self.heard = time.monotonic()
        self.next_beat = time.monotonic()


def _dealer(context: zmq.Context, target: BrokerTarget) -> zmq.Socket:
    socket = context.socket(zmq.DEALER)
    socket.curve_serverkey = target.server_public_key
    socket.curve_publickey, socket.curve_secretkey = target.client_keys
    socket.setsockopt(zmq.SNDHWM, 1_000_000)
    socket.setsockopt(zmq.RCVHWM, 1_000_000)
    socket.linger = 0
    socket.connect(target.address)
    return socket


def _pair(context: zmq.Context, endpoint: str, bind: bool) -> zmq.Socket:
    socket = context.socket(zmq.PAIR)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.linger = 0
    if bind:
        socket.bind(endpoint)
    else:
        socket.connect(endpoint)
    return socket


def _drain(socket: zmq.Socket, limit: int = 1000) -> list[list[bytes]]:
    messages = []
    for _ in range(limit):
        try:
            messages.append(socket.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
    return messages


def _is_fatal(frames: list[bytes]) -> bool:
    try:
        _, body = decode(frames, from_worker=False)
    except ProtocolError:
        return False
    return isinstance(body, Disconnect) and body.fatal

