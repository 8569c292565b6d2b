"""Running a gateway: `serve_gateway` (blocking; what `tsslurm gateway` calls) binds the socket,
makes the first API key when the deployment has none, writes `gateway.json` (0600: URL and pid)
in the state directory and runs uvicorn until SIGINT/SIGTERM. `spawn_gateway` runs one as a child
process and waits until it listens: how `tsslurm up`, tests and benchmarks start one, so the
gateway's work never competes with the broker's loop for one interpreter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tsslurm.errors import UserError
from tsslurm.gateway.keys import create_key, keys_file
from tsslurm.gateway.service import Gateway, GatewaySettings
from tsslurm.statedir import StateDir, write_atomically

INFO_FILE = "gateway.json"


class GatewayInfo(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    """Base URL of the OpenAI API: `<url>/v1`."""
    host: str
    port: int
    pid: int
    model: str
    started_at: float


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    info: GatewayInfo
    new_key: str | None
    """The API key made at this first start (shown once), if the deployment had none."""
    template: str
    """Where the chat template came from ("fallback" when the model has none)."""


def serve_gateway(settings: GatewaySettings, host: str = "127.0.0.1", port: int = 8000, *,
                  on_ready: Callable[[Ready], None] | None = None,
                  log_level: str = "warning") -> None:
    """Serve until SIGINT or SIGTERM. Binds localhost unless told otherwise."""
    import uvicorn

    from tsslurm.gateway.app import create_app
    from tsslurm.gateway.asgi import RawSend

    gateway = Gateway(settings)
    new_key = None if keys_file(settings.state_dir).exists() \
        else create_key(settings.state_dir, "default")
    listener = _listen(host, port)
    info = GatewayInfo(url=_url(host, listener.getsockname()[1]), host=host,
                       port=listener.getsockname()[1], pid=os.getpid(),
                       model=gateway.limits.model, started_at=time.time())
    state = StateDir.open(settings.state_dir)
    write_atomically(state.root / INFO_FILE, msgspec.json.encode(info) + b"\n")
    config = uvicorn.Config(RawSend(create_app(gateway)), log_level=log_level.lower(), access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5, server_header=False)
    previous = signal.signal(signal.SIGTERM, _stopped)  # uvicorn re-raises it once shut down
    try:
        if on_ready is not None:
            on_ready(Ready(info=info, new_key=new_key, template=gateway.template.origin))
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        signal.signal(signal.SIGTERM, previous)
        _remove_info(state.root / INFO_FILE, os.getpid())
        listener.close()


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def read_info(state_dir: Path) -> GatewayInfo:
    file = Path(state_dir) / INFO_FILE
    try:
        return msgspec.json.decode(file.read_bytes(), type=GatewayInfo)
    except FileNotFoundError:
        raise UserError(f"no gateway runs for {state_dir} ({file} does not exist)") from None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise UserError(f"unusable gateway file {file}: {error}") from None


class GatewayProcess:
    """A gateway child process (`spawn_gateway`)."""

    def __init__(self, process: subprocess.Popen[bytes], info: GatewayInfo, log: Path):
        self.process = process
        self.info = info
        self.log = log

    @property
    def url(self) -> str:
        return self.info.url

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def spawn_gateway(state_dir: Path, log: Path, host: str = "127.0.0.1", port: int = 0, *,
                  options: tuple[str, ...] = (), env: dict[str, str] | None = None,
                  timeout_s: float = 30.0) -> GatewayProcess:
    """`tsslurm gateway` as a child process (output to `log`), once it listens. `options` are
    more command-line options (e.g. `--timeout 30`)."""
    argv = [sys.executable, "-c", "from tsslurm.cli import main; main()", "gateway",
            "--state-dir", str(state_dir), "--host", host, "--port", str(port), *options]
    with open(log, "ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                   env=env if env is not None else dict(os.environ))
    deadline = time.monotonic() + timeout_s
    while True:
        info = _info_of(state_dir, process.pid)
        if info is not None:
            return GatewayProcess(process, info, log)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            tail = log.read_text(errors="replace")[-3000:]
            raise UserError(f"the gateway did not start (exit {process.returncode}):\n{tail}")
        time.sleep(0.05)


def _info_of(state_dir: Path, pid: int) -> GatewayInfo | None:
    try:
        info = read_info(state_dir)
    except UserError:
        return None
    return info if info.pid == pid else None


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=4096)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _remove_info(file: Path, pid: int) -> None:
    try:
        if msgspec.json.decode(file.read_bytes(), type=GatewayInfo).pid == pid:
            file.unlink()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        pass
