"""Component fixtures: a deployment of real processes on loopback - `tsslurm broker` and
`python -m tsslurm.launcher` mock workers - with a per-test state directory, profile and ephemeral
ports. Every process started here is killed at teardown."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import zmq

from tsslurm.broker.requests import RequestRecord
from tsslurm.broker.run import open_broker
from tsslurm.broker.server import Broker
from tsslurm.broker.store import read_requests
from tsslurm.client import AsyncClient, Client
from tsslurm.profile import load_profile
from tsslurm.protocol import Command, Ping, decode, encode
from tsslurm.statedir import Connection, StateDir, StateDirError

REPO = Path(__file__).resolve().parents[2]
MOCK_PROFILE = REPO / "profiles" / "local-mock.yaml"
TSSLURM = str(Path(sys.executable).parent / "tsslurm")
T = TypeVar("T")


class Deployment:
    """A broker and its workers as local subprocesses."""

    def __init__(self, root: Path, profile_text: str):
        root.mkdir(mode=0o700, parents=True)
        self.root = root
        self.state_root = root / "state"
        self.profile = root / "profile.yaml"
        self.profile.write_text(profile_text)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._in_process_stop: Callable[[], None] | None = None

    # ---- processes ------------------------------------------------------------------------------

    def start_broker(self, timeout_s: float = 20.0) -> Connection:
        process = self._spawn("broker", [TSSLURM, "broker", "-p", str(self.profile),
                                         "--state-dir", str(self.state_root)], os.environ)
        self._wait(lambda: self._connection_of(process.pid) is not None, timeout_s,
                   "the broker to write its connection file", "broker")
        return self.connection

    def start_broker_in_process(self) -> Broker:
        """The broker in this process, its loop on a thread: for its in-process seams (events,
        call_soon, drain). Its log lines still go to broker.log."""
        handler = logging.FileHandler(self.root / "broker.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger = logging.getLogger("tsslurm.broker")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        opened = open_broker(load_profile(self.profile), self.state_root)
        broker = opened.__enter__()
        thread = threading.Thread(target=broker.run, name="broker-loop", daemon=True)
        thread.start()

        def stop() -> None:
            broker.request_stop()
            thread.join(10)
            opened.__exit__(None, None, None)
            logger.removeHandler(handler)
            handler.close()

        self._in_process_stop = stop
        return broker

    def on_loop(self, broker: Broker, action: Callable[[float], T], timeout_s: float = 5.0) -> T:
        """Run `action(now)` on the broker's loop thread and return its result."""
        done: queue.Queue[T] = queue.Queue()
        broker.call_soon(lambda now: done.put(action(now)))
        return done.get(timeout=timeout_s)

    def start_worker(self, name: str, role: str, *, wait: bool = True,
                     timeout_s: float = 20.0, **env: str) -> subprocess.Popen[bytes]:
        variables = {**os.environ, "TSSLURM_ROLE": role, "TSSLURM_PROFILE": str(self.profile),
                     "TSSLURM_STATE_DIR": str(self.state_root), "TSSLURM_WORKER_ID": name, **env}
        variables.pop("SLURM_JOB_ID", None)
        marks = self.broker_log().count(f"worker {name} ready")
        process = self._spawn(name, [sys.executable, "-m", "tsslurm.launcher"], variables)
        if wait:
            self.wait_for_log(f"worker {name} ready", count=marks + 1, timeout_s=timeout_s)
        return process

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def exit_code(self, name: str, timeout_s: float = 15.0) -> int:
        return self.processes[name].wait(timeout_s)

    def close(self) -> None:
        if self._in_process_stop is not None:
            self._in_process_stop()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            process.wait(10)

    # ---- observation ------------------------------------------------------------------------

    @property
    def state(self) -> StateDir:
        return StateDir.open(self.state_root)

    @property
    def connection(self) -> Connection:
        return self.state.read_connection()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def broker_log(self) -> str:
        return self.log("broker")

    def wait_for_log(self, text: str, count: int = 1, timeout_s: float = 20.0,
                     name: str = "broker") -> None:
        self._wait(lambda: self.log(name).count(text) >= count, timeout_s, repr(text), name)

    def records(self, count: int, timeout_s: float = 15.0) -> list[RequestRecord]:
        """Completed-request records once at least `count` are in the broker's store."""
        found: list[RequestRecord] = []

        def enough() -> bool:
            nonlocal found
            found = read_requests(self.state.database)
            return len(found) >= count

        self._wait(enough, timeout_s, f"{count} request records", "broker")
        return found

    def client(self, **options: float) -> AsyncClient:
        return AsyncClient(state_dir=self.state_root, **options)  # type: ignore[arg-type]

    def sync_client(self, **options: float) -> Client:
        return Client(state_dir=self.state_root, **options)  # type: ignore[arg-type]

    def raw_socket(self, context: zmq.Context, public: bytes | None = None,
                   secret: bytes | None = None, server_key: bytes | None = None,
                   port: str = "client") -> zmq.Socket:
        """A DEALER to the broker with the deployment's keys unless others are given."""
        keys = self.state.client_keys()
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.curve_serverkey = server_key or self.connection.server_public_key.encode()
        socket.curve_publickey = public or keys.public
        socket.curve_secretkey = secret or keys.secret
        address = self.connection.client_address if port == "client" \
            else self.connection.worker_address
        socket.connect(address)
        return socket

    @staticmethod
    def ping(socket: zmq.Socket, timeout_ms: int = 1500) -> bool:
        """True when the broker answers a PING on this socket within the timeout."""
        try:
            socket.send_multipart(encode(Command.PING, Ping(nonce=7)), zmq.NOBLOCK)
        except zmq.Again:  # no connection: the handshake failed
            time.sleep(timeout_ms / 1000)
            return False
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if not socket.poll(int(left * 1000) + 1):
                return False
            command, _ = decode(socket.recv_multipart())
            if command is Command.PONG:
                return True
        return False

    def _spawn(self, name: str, argv: list[str], env: object) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,  # type: ignore[arg-type]
                                   cwd=self.root)
        log.close()
        self.processes[name] = process
        return process

    def _connection_of(self, pid: int) -> Connection | None:
        try:
            connection = StateDir(self.state_root).read_connection()
        except StateDirError:  # not written yet
            return None
        return connection if connection.broker_pid == pid else None

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str, name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            process = self.processes.get(name)
            if process is not None and process.poll() is not None and not done():
                raise AssertionError(f"{name} exited ({process.returncode}) while waiting for "
                                     f"{what}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log(name)[-3000:]}")
            time.sleep(0.02)


def profile_text(**replacements: str) -> str:
    """The local-mock profile with `old=new` text replacements (keys are only labels)."""
    text = MOCK_PROFILE.read_text()
    for old_new in replacements.values():
        old, new = old_new.split("=>")
        assert old in text, f"{old!r} is not in local-mock.yaml"
        text = text.replace(old, new)
    return text


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """deployment(**replacements) -> a Deployment (not started) with its own state directory."""
    made: list[Deployment] = []

    def make(**replacements: str) -> Deployment:
        made.append(Deployment(tmp_path / f"deployment{len(made)}", profile_text(**replacements)))
        return made[-1]

    yield make
    for each in made:
        each.close()
