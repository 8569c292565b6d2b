"""CURVE on the broker's sockets, with a ZAP authenticator (pyzmq's ThreadAuthenticator) that admits
only the client public keys in the state directory's authorized_keys/ (the deployment's own client
key, used by its launcher jobs and local clients, plus keys given to other users). The key set is
re-read when that directory changes, so access can be granted or revoked while the broker runs.

A peer without an authorized key fails the CURVE handshake: it never reaches the broker's loop."""

from __future__ import annotations

import logging
import os

import zmq
from zmq.auth.thread import ThreadAuthenticator

from tsslurm.statedir import StateDir

log = logging.getLogger("tsslurm.broker")


class CurveGuard:
    """Owns the authenticator thread and the allowed key set."""

    def __init__(self, context: zmq.Context, state: StateDir):
        self._state = state
        self._server = state.server_keys()
        self._allowed: frozenset[bytes] = frozenset()
        self._stamp: tuple[float, ...] = ()
        self.refused = 0
        self.reload()
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("tsslurm.zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback(domain="*", credentials_provider=self)

    def secure(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server with the deployment's key pair (before bind)."""
        socket.curve_secretkey = self._server.secret
        socket.curve_publickey = self._server.public
        socket.curve_server = True

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP decision for one handshake (runs on the authenticator's thread)."""
        allowed = client_key in self._allowed
        if not allowed:
            self.refused += 1
        return allowed

    def reload(self) -> None:
        """Re-read authorized_keys/ if any file in it changed."""
        stamp = self._directory_stamp()
        if stamp == self._stamp:
            return
        keys, problems = self._state.allowed_client_keys()
        for problem in problems:
            log.warning("ignoring an authorized key: %s", problem)
        self._allowed = frozenset(keys)
        self._stamp = stamp

    def stop(self) -> None:
        self._authenticator.stop()

    def _directory_stamp(self) -> tuple[float, ...]:
        directory = self._state.authorized_keys
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return ()
        return (directory.stat().st_mtime, *sorted(e.stat().st_mtime for e in entries))
