"""The deployment state directory: CURVE keys, the connection file, and where the broker's SQLite
database and logs live. Launcher jobs and clients of the same user find the broker through it.

Layout (the directory is 0700, every file 0600):
  server.key_secret   the broker's CURVE key pair (ZeroMQ certificate format)
  client.key_secret   the deployment's client key pair, used by launcher jobs and local clients
  authorized_keys/    public keys the broker accepts, one `*.key` ZeroMQ certificate (or a bare
                      Z85 key) per file; holds the deployment's own client.key. Another user gets
                      access by having their public key added here (`StateDir.authorize`) or by
                      being handed a credentials file (`StateDir.issue_client`).
  connection.json     where the broker listens (written by the running broker)
  broker.sqlite       the broker's store (tsslurm/broker/store.py)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

import msgspec
import zmq
import zmq.auth

from tsslurm.errors import UserError

_Z85_KEY = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class StateDirError(UserError):
    """A state directory, key or connection file that cannot be used."""


class Keypair(NamedTuple):
    public: bytes
    secret: bytes


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """What clients and workers need to reach a running broker."""

    deployment: str
    host: str
    client_port: int
    worker_port: int
    server_public_key: str
    protocol_version: int
    broker_pid: int
    started_at: float
    model: str = ""
    max_context_tokens: int = 0
    tokenizer: str | None = None
    """A directory holding tokenizer.json, "bytes" (the mock byte tokenizer) or None."""

    @property
    def client_address(self) -> str:
        return f"tcp://{self.host}:{self.client_port}"

    @property
    def worker_address(self) -> str:
        return f"tcp://{self.host}:{self.worker_port}"


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """Everything another user's client needs: the broker's address and key, and its own key pair."""

    connection: Connection
    client_public_key: str
    client_secret_key: str

    @property
    def client_keys(self) -> Keypair:
        return Keypair(self.client_public_key.encode(), self.client_secret_key.encode())


class Endpoint(NamedTuple):
    """How a client reaches a deployment."""

    address: str
    server_public_key: bytes
    client_keys: Keypair
    tokenizer: str | None = None
    model: str = ""


class StateDir:
    """One deployment's state directory. `create` makes it (and its keys); `open` requires it."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> StateDir:
        path = Path(root).expanduser()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        state = cls(path)
        state.authorized_keys.mkdir(mode=0o700, exist_ok=True)
        for name in ("server", "client"):
            if not state._secret_file(name).exists():
                _write_certificate(state._secret_file(name), *zmq.curve_keypair())
        state.authorize("deployment-client", state.client_keys().public)
        return state

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> StateDir:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise StateDirError(f"no deployment state directory at {path}: start the broker first "
                                "(tsslurm broker / tsslurm up) or pass the right --state-dir")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StateDirError(f"{path} is readable by other users (mode {mode:o}); it holds "
                                f"secret keys: run `chmod 700 {path}`")
        return cls(path)

    @property
    def connection_file(self) -> Path:
        return self.root / "connection.json"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def database(self) -> Path:
        return self.root / "broker.sqlite"

    def server_keys(self) -> Keypair:
        return _read_keypair(self._secret_file("server"))

    def client_keys(self) -> Keypair:
        return _read_keypair(self._secret_file("client"))

    def allowed_client_keys(self) -> tuple[set[bytes], list[str]]:
        """Z85 public keys in authorized_keys/, and a message per file that holds none."""
        keys: set[bytes] = set()
        problems: list[str] = []
        for file in sorted(self.authorized_keys.glob("*")):
            try:
                keys.add(read_public_key(file))
            except StateDirError as error:
                problems.append(str(error))
        return keys, problems

    def authorize(self, name: str, public_key: bytes | str) -> Path:
        """Let the holder of `public_key` (Z85) connect, as a client or a worker."""
        key = public_key.encode() if isinstance(public_key, str) else public_key
        if not _Z85_KEY.match(key):
            raise StateDirError(f"not a CURVE public key (40 Z85 characters): {key[:48]!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise StateDirError(f"key name {name!r}: use letters, digits, '.', '_' and '-'")
        file = self.authorized_keys / f"{name}.key"
        _write_private(file, _certificate_text(key, None))
        return file

    def issue_client(self, name: str, out: str | os.PathLike[str]) -> Path:
        """A new client key pair for another user: authorize its public key, write a credentials
        file (0600) holding it and the broker's connection to hand over."""
        public, secret = zmq.curve_keypair()
        self.authorize(name, public)
        credentials = Credentials(connection=self.read_connection(),
                                  client_public_key=public.decode(), client_secret_key=secret.decode())
        path = Path(out).expanduser()
        _write_private(path, msgspec.json.encode(credentials).decode() + "\n")
        return path

    def write_connection(self, connection: Connection) -> None:
        write_atomically(self.connection_file, msgspec.json.encode(connection) + b"\n")

    def read_connection(self) -> Connection:
        return read_connection_file(self.connection_file)

    def remove_connection(self, broker_pid: int) -> None:
        """Remove the connection file if it still names this broker."""
        try:
            if self.read_connection().broker_pid == broker_pid:
                self.connection_file.unlink()
        except (StateDirError, FileNotFoundError):
            pass

    def _secret_file(self, name: str) -> Path:
        return self.root / f"{name}.key_secret"


def read_connection_file(path: str | os.PathLike[str]) -> Connection:
    file = Path(path).expanduser()
    try:
        return msgspec.json.decode(file.read_bytes(), type=Connection)
    except FileNotFoundError:
        raise StateDirError(f"no connection file at {file}: is the broker running?") from None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise StateDirError(f"unusable connection file {file}: {error}") from None


def read_credentials(path: str | os.PathLike[str]) -> Credentials:
    file = Path(path).expanduser()
    try:
        return msgspec.json.decode(file.read_bytes(), type=Credentials)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise StateDirError(f"unusable credentials file {file}: {error}") from None


def read_public_key(file: Path) -> bytes:
    """The Z85 public key of a ZeroMQ certificate, or of a file holding just the key."""
    try:
        text = file.read_bytes()
    except OSError as error:
        raise StateDirError(f"cannot read key file {file}: {error.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        candidate = line.split(b"=", 1)[1].strip(b" \t'\"") if line.startswith(b"public-key") \
            else line
        if _Z85_KEY.match(candidate):
            return candidate
    raise StateDirError(f"{file} holds no CURVE public key")


def _read_keypair(file: Path) -> Keypair:
    try:
        public, secret = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as error:
        raise StateDirError(f"cannot read key pair {file}: {error}") from None
    if not secret:
        raise StateDirError(f"{file} holds no secret key")
    return Keypair(public, secret)


def _write_certificate(file: Path, public: bytes, secret: bytes) -> None:
    _write_private(file, _certificate_text(public, secret))


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    lines = ["#   ZeroMQ CURVE certificate (tsslurm)", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def write_atomically(file: Path, data: bytes) -> None:
    """Replace `file` (0600) in one step: a reader sees the old content or the new, never half."""
    temporary = file.with_name(file.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    temporary.replace(file)


def _write_private(file: Path, text: str) -> None:
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(file, 0o600)


def find_endpoint(state_dir: str | Path | None = None, credentials: str | Path | None = None,
                  profile: str | None = None) -> Endpoint:
    """The deployment to talk to: a credentials file, a state directory, or a profile's."""
    if credentials is not None:
        given = read_credentials(credentials)
        c = given.connection
        return Endpoint(c.client_address, c.server_public_key.encode(), given.client_keys,
                        c.tokenizer, c.model)
    if state_dir is None:
        from tsslurm.profile import load_profile
        from tsslurm.profile import state_dir as profile_state_dir

        state_dir = profile_state_dir(load_profile(profile or "local-tiny"))
    state = StateDir.open(state_dir)
    c = read_connection_file(state.connection_file)
    return Endpoint(c.client_address, c.server_public_key.encode(), state.client_keys(),
                    c.tokenizer, c.model)
