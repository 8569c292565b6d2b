"""CURVE and the state directory: a peer without the deployment's client key (no CURVE, a key
the broker does not know, the wrong server key) is refused; keys given to other users work, as
soon as they are authorized; keys and files are private to their user."""

from __future__ import annotations

import asyncio
import stat

import msgspec
import pytest
import zmq

from tsslurm.client import AsyncClient, BrokerUnavailable, Client
from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.statedir import Credentials

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(deployment):
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    return d


def test_the_deployment_key_is_answered(served) -> None:
    context = zmq.Context()
    try:
        assert served.ping(served.raw_socket(context))
    finally:
        context.destroy(linger=0)


def test_peers_without_the_key_are_refused(served) -> None:
    context = zmq.Context()
    try:
        plain = context.socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(served.connection.client_address)
        stranger_public, stranger_secret = zmq.curve_keypair()
        stranger = served.raw_socket(context, public=stranger_public, secret=stranger_secret)
        wrong_server = served.raw_socket(context, server_key=zmq.curve_keypair()[0])
        worker_stranger = served.raw_socket(context, public=stranger_public,
                                            secret=stranger_secret, port="worker")
        for socket in (plain, stranger, wrong_server, worker_stranger):
            assert not served.ping(socket, timeout_ms=700)
        assert served.ping(served.raw_socket(context)), "the broker still serves its own key"
    finally:
        context.destroy(linger=0)


def test_the_client_library_reports_a_refused_key_clearly(served) -> None:
    public, secret = zmq.curve_keypair()
    endpoint_file = served.root / "stranger.json"
    endpoint_file.write_bytes(msgspec.json.encode(Credentials(
        connection=served.connection, client_public_key=public.decode(),
        client_secret_key=secret.decode())))
    with pytest.raises(BrokerUnavailable, match="does not answer"), \
            Client(credentials=endpoint_file, idle_s=0.3, reconnects=1, timeout_s=10) as client:
        client.generate([65, 66], max_tokens=3)


def test_the_async_client_reports_a_refused_key_clearly(served) -> None:
    public, secret = zmq.curve_keypair()
    endpoint_file = served.root / "stranger.json"
    endpoint_file.write_bytes(msgspec.json.encode(Credentials(
        connection=served.connection, client_public_key=public.decode(),
        client_secret_key=secret.decode())))

    async def attempt() -> None:
        client = AsyncClient(credentials=endpoint_file, idle_s=0.4, reconnects=1, timeout_s=20)
        try:
            await client.generate([65, 66], max_tokens=3)
        finally:
            await client.close()

    with pytest.raises(BrokerUnavailable, match="does not answer"):
        asyncio.run(attempt())


def test_a_key_authorized_while_the_broker_runs_is_accepted(served) -> None:
    public, secret = zmq.curve_keypair()
    context = zmq.Context()
    try:
        alice = served.raw_socket(context, public=public, secret=secret)
        assert not served.ping(alice, timeout_ms=500)
        served.state.authorize("alice", public)
        # a refused handshake is final for its socket: each attempt gets a new one
        assert any(served.ping(served.raw_socket(context, public=public, secret=secret),
                               timeout_ms=1000) for _ in range(5)), "keys reload within seconds"
    finally:
        context.destroy(linger=0)


def test_issued_credentials_let_another_user_generate(served) -> None:
    credentials = served.state.issue_client("bob", served.root / "bob.json")
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    result = None
    for _ in range(5):  # the broker re-reads authorized_keys/ every 2 s
        try:
            with Client(credentials=credentials, idle_s=0.5, reconnects=1, timeout_s=10) as bob:
                result = bob.generate([70, 71, 72], max_tokens=5)
            break
        except BrokerUnavailable:
            continue
    assert result is not None and result.token_ids == mock_continuation([70, 71, 72], 5)


def test_state_directory_is_private(served) -> None:
    root = served.state_root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(served.state.authorized_keys.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    root.chmod(0o755)
    with pytest.raises(Exception, match="readable by other users"):
        served.state  # noqa: B018 (opening checks the mode)
    root.chmod(0o700)
