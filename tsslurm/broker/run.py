"""Running a broker for a profile (without autoscaling): state directory and keys, store, sockets,
connection file, signals. `tsslurm broker` calls `serve`; `tsslurm up` (issue 7) builds on
`open_broker` and adds its autoscaler through `Broker.every` and `Broker.events`."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import zmq

from tsslurm.broker.config import BrokerConfig, config_from_profile
from tsslurm.broker.server import Broker
from tsslurm.broker.store import Store
from tsslurm.errors import UserError
from tsslurm.profile.schema import Profile
from tsslurm.protocol import PROTOCOL_VERSION
from tsslurm.statedir import Connection, StateDir
from tsslurm.tokenizer import TokenizerError, load_tokenizer, tokenizer_spec

log = logging.getLogger("tsslurm.broker")


@contextlib.contextmanager
def open_broker(profile: Profile, state_root: Path, **overrides: object) -> Iterator[Broker]:
    """A bound broker whose connection file is written; cleaned up on exit."""
    config = config_from_profile(profile, **overrides)
    state = StateDir.create(state_root)
    store = Store(state.database)
    store.start()
    spec = tokenizer_spec(profile)
    try:
        tokenizer = load_tokenizer(spec)
    except TokenizerError as error:
        log.warning("%s: text prompts will be refused (clients can send token ids)", error)
        tokenizer, spec = None, None
    broker = Broker(config, state, store=store, tokenizer=tokenizer)
    try:
        _bind(broker)
        connection = _connection(config, broker, profile, spec)
        state.write_connection(connection)
        store.set_deployment({"deployment": profile.deployment, "model": profile.model.name,
                              "broker_pid": str(os.getpid()), "started_at": str(time.time())})
        yield broker
    finally:
        state.remove_connection(os.getpid())
        broker.close()
        store.close()


def serve(profile: Profile, state_root: Path, on_ready: Callable[[Connection], None] | None = None,
          **overrides: object) -> None:
    """Run until SIGTERM or SIGINT."""
    with open_broker(profile, state_root, **overrides) as broker:
        gc.freeze()  # what start-up made lives as long as the broker: keep it out of collections
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: broker.request_stop())
        if on_ready is not None:
            on_ready(broker.state.read_connection())
        broker.run()
        log.info("broker stopping: %s", msgspec.json.encode(broker.summary()).decode())


def _bind(broker: Broker) -> None:
    try:
        broker.bind()
    except zmq.ZMQBaseError as error:  # address in use, bad host, no free port
        raise UserError(f"cannot bind the broker on {broker.config.host}: {error}") from None


def _connection(config: BrokerConfig, broker: Broker, profile: Profile,
                tokenizer: str | None) -> Connection:
    return Connection(
        deployment=config.deployment, host=config.host, client_port=broker.client_port,
        worker_port=broker.worker_port,
        server_public_key=broker.state.server_keys().public.decode(),
        protocol_version=PROTOCOL_VERSION, broker_pid=os.getpid(), started_at=time.time(),
        model=config.model, max_context_tokens=config.max_context_tokens, tokenizer=tokenizer)
