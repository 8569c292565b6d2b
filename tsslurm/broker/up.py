"""`tsslurm up` in the foreground: one deployment's broker plus its autoscaler, until a `down`.

It picks the backend (Slurm when the profile's partitions are in a reachable cluster, else local
processes, and says why), builds the tiny model when the local-tiny profile needs it, takes the
deployment's lock (one broker per state directory: `broker.pid`), binds the broker on the
address and ports of the previous run when there was one (so the workers and clients of a
crashed broker find it again), re-adopts that run's jobs and starts ticking.
SIGINT or SIGTERM drains and stops (a second SIGINT cancels at once); SIGUSR1 (the broker's own
job nearing its time limit) submits the job that takes over from it (broker_job.py), after which
SIGTERM hands over instead."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from tsslurm.broker import broker_job
from tsslurm.broker.autoscaler import Autoscaler, Control, withdraw_handover, write_control
from tsslurm.broker.backends import JobBackend, SlurmBackend
from tsslurm.broker.local_jobs import LocalBackend
from tsslurm.broker.metrics import Metrics
from tsslurm.broker.run import open_broker
from tsslurm.broker.server import Broker
from tsslurm.broker.store import Store
from tsslurm.errors import UserError
from tsslurm.policy.runner import PolicyRunner
from tsslurm.profile import load_profile, state_dir
from tsslurm.profile.load import resolve_profile_path
from tsslurm.profile.schema import Profile
from tsslurm.slurm.adapter import SlurmAdapter
from tsslurm.statedir import StateDir, StateDirError

log = logging.getLogger("tsslurm.up")

PID_FILE = "broker.pid"
TAKE_OVER_WAIT_S = 120.0
"""How long a successor broker waits for the running one to hand over."""
TINY_MODEL = "tiny-llama"
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UpOptions(msgspec.Struct, frozen=True, kw_only=True):
    profile: str = "local-tiny"
    backend: str | None = None
    """"slurm", "local", or None to choose."""
    policy: str | None = None
    """A policy reference overriding the profile's (name@key=value...)."""
    state_dir: str | None = None
    job_prefix: str | None = None
    """Job names are <job_prefix>-<role> (default tsslurm-<deployment>)."""
    metrics_port: int | None = None
    """Overrides the profile's broker.metrics_port (0: an ephemeral port)."""
    detach: bool = False
    demo: bool = False
    broker_in_job: bool = False
    broker_partition: str = "cpu"
    broker_time: str = "1-00:00:00"
    take_over: bool = False
    """Run in the successor of the deployment's broker job: ask the running broker to hand over
    and wait for it (broker_job.py)."""
    log_level: str = "INFO"


class Deployment(msgspec.Struct, frozen=True):
    profile: Profile
    profile_path: str
    root: Path


def resolve(options: UpOptions) -> Deployment:
    profile = load_profile(options.profile)
    path = str(resolve_profile_path(options.profile).resolve())
    root = Path(options.state_dir).expanduser() if options.state_dir else state_dir(profile)
    return Deployment(profile, path, root.resolve())


def choose_backend(profile: Profile, requested: str | None,
                   adapter: SlurmAdapter | None = None) -> tuple[str, str]:
    """("slurm" | "local", why)."""
    if requested is not None:
        if requested not in ("slurm", "local"):
            raise UserError(f"--backend {requested!r}: use slurm or local")
        return requested, "asked for with --backend"
    if shutil.which("sinfo") is None:
        return "local", "no Slurm commands on this host"
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    if not Path(conf).is_file():
        return "local", f"no Slurm configuration ({conf} does not exist; set SLURM_CONF)"
    adapter = adapter or SlurmAdapter()
    if not adapter.ping():
        return "local", "no Slurm controller answers `scontrol ping`"
    names = {part.name for part in adapter.partitions()}
    missing = [p.name for p in profile.partitions if p.name not in names]
    if missing:
        return "local", f"the profile's partition(s) {', '.join(missing)} are not in this cluster"
    return "slurm", f"the profile's partitions are in the Slurm cluster ({conf})"


def ensure_model(profile: Profile, say: Callable[[str], None]) -> None:
    """Build the tiny model when the profile serves it and its directory is missing."""
    path = Path(profile.model.path).expanduser()
    if profile.engine.kind != "vllm" or profile.model.name != TINY_MODEL or path.exists():
        return
    from tsslurm.models.tiny import build_tiny_model

    say(f"building the tiny model in {path} (no download)")
    build_tiny_model(path)


def job_prefix(deployment: Deployment, given: str | None, store: Store) -> str:
    prefix = given or store.deployment().get("job_prefix") or f"tsslurm-{deployment.profile.deployment}"
    if not _PREFIX.match(prefix):
        raise UserError(f"job prefix {prefix!r}: use letters, digits, '.', '_' and '-'")
    return prefix


def make_backend(kind: str, deployment: Deployment, prefix: str) -> JobBackend:
    if kind == "slurm":
        return SlurmBackend(SlurmAdapter(), profile_path=deployment.profile_path,
                            state_dir=deployment.root, name_prefix=prefix)
    return LocalBackend(profile_path=deployment.profile_path, state_dir=deployment.root)


@contextlib.contextmanager
def deployment_lock(root: Path, wait_s: float = 0.0) -> Iterator[None]:
    """One broker per deployment: an flock on broker.pid, which holds this process's pid.
    With `wait_s`, wait that long for the broker holding it to leave."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(root / PID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(descriptor):
            if time.monotonic() >= deadline:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
                raise UserError(f"this deployment is already up (broker pid {holder}, state "
                                f"{root}): see `tsslurm status`, or `tsslurm down` first")
            time.sleep(0.2)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _taken_over(root: Path) -> Iterator[None]:
    """The lock of a deployment whose broker job this successor job replaces: ask the running
    broker to hand over, wait for it to leave, and become the broker job."""
    job_id = broker_job.check_successor(root)
    write_control(root, Control("handover"))
    log.info("job %s: asked the running broker to hand over", job_id)
    with deployment_lock(root, wait_s=TAKE_OVER_WAIT_S):
        withdraw_handover(root)
        broker_job.check_successor(root)
        broker_job.promote(root, job_id)
        yield


def previous_ports(root: Path) -> dict[str, object]:
    """The address and ports of the last broker of this deployment (its connection file)."""
    try:
        connection = StateDir(root).read_connection()
    except StateDirError:
        return {}
    return {"client_port": connection.client_port, "worker_port": connection.worker_port}


def run(options: UpOptions, say: Callable[[str], None],
        on_serving: Callable[[Broker, Autoscaler], None] | None = None) -> None:
    """Serve the deployment in this process until a down."""
    deployment = resolve(options)
    if options.demo and on_serving is None:
        on_serving = lambda broker, autoscaler: _start_demo(deployment.root, say)
    profile = deployment.profile
    ensure_model(profile, say)
    kind, why = choose_backend(profile, options.backend)
    runner = PolicyRunner.from_ref(options.policy or profile.policy.name, profile.policy.params)
    StateDir.create(deployment.root)
    lock = _taken_over(deployment.root) if options.take_over else deployment_lock(deployment.root)
    with lock, _bound_broker(deployment) as broker:
        assert broker.store is not None
        prefix = job_prefix(deployment, options.job_prefix, broker.store)
        backend = make_backend(kind, deployment, prefix)
        metrics = _metrics(profile, options.metrics_port)
        autoscaler = Autoscaler(broker, profile, backend, runner, deployment.root,
                                backend_why=why, metrics=metrics)
        try:
            _serve(broker, autoscaler, deployment, kind, prefix, say, on_serving)
        finally:
            autoscaler.close()
            if metrics is not None:
                metrics.close()


def _serve(broker: Broker, autoscaler: Autoscaler, deployment: Deployment, kind: str,
           prefix: str, say: Callable[[str], None],
           on_serving: Callable[[Broker, Autoscaler], None] | None) -> None:
    adopted = autoscaler.adopt(time.time())
    broker.store.set_deployment({  # type: ignore[union-attr]
        "backend": kind, "job_prefix": prefix, "profile_path": deployment.profile_path,
        "slurm_conf": os.environ.get("SLURM_CONF", "")})
    autoscaler.backend.start()
    broker.every("autoscaler", deployment.profile.broker.tick_s, autoscaler.tick)
    _signals(autoscaler, deployment.root)
    connection = broker.state.read_connection()
    say(f"{deployment.profile.deployment} up: {kind} backend ({autoscaler.backend_why}), policy "
        f"{autoscaler.runner.name}, clients {connection.client_address}, state {deployment.root}"
        + (f", re-adopted jobs {', '.join(adopted)}" if adopted else ""))
    if on_serving is not None:
        on_serving(broker, autoscaler)
    gc.freeze()
    broker.run()
    say(f"{deployment.profile.deployment} stopped")


@contextlib.contextmanager
def _bound_broker(deployment: Deployment) -> Iterator[Broker]:
    ports = previous_ports(deployment.root)
    try:
        opened = open_broker(deployment.profile, deployment.root, **ports)
        broker = opened.__enter__()
    except UserError as error:
        if not ports:
            raise
        log.warning("%s; binding new ports (workers and clients read the new connection file)",
                    error)
        opened = open_broker(deployment.profile, deployment.root)
        broker = opened.__enter__()
    try:
        yield broker
    finally:
        opened.__exit__(None, None, None)


def _metrics(profile: Profile, override: int | None) -> Metrics | None:
    port = override if override is not None else profile.broker.metrics_port
    if port is None:
        return None
    metrics = Metrics()
    try:
        metrics.serve(port, profile.broker.host)
    except OSError as error:
        raise UserError(f"cannot serve metrics on {profile.broker.host}:{port}: {error}") from None
    return metrics


def _signals(autoscaler: Autoscaler, root: Path) -> None:
    asked = {"count": 0}

    def down(signum: int, frame: object) -> None:
        if signum == signal.SIGTERM and autoscaler.rotating:
            log.warning("SIGTERM at the time limit: handing over to the successor broker job")
            autoscaler.request_handover()
            return
        asked["count"] += 1
        now = signum == signal.SIGINT and asked["count"] > 1
        log.warning("%s: %s", signal.Signals(signum).name,
                    "cancelling every job now" if now else "draining, then stopping "
                    "(Ctrl-C again to cancel at once)")
        autoscaler.request_down(now)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, down)
    signal.signal(signal.SIGUSR1, lambda *_: _time_limit_near(autoscaler, root))


def _time_limit_near(autoscaler: Autoscaler, root: Path) -> None:
    """SIGUSR1: in the deployment's broker job, submit its successor (off the signal handler:
    sbatch takes a while); anywhere else there is nothing to rotate."""
    if broker_job.own_job(root) is None:
        log.warning("SIGUSR1: the time limit is near, but this broker is not the deployment's "
                    "broker job: nothing to rotate")
        return
    autoscaler.rotating = True
    threading.Thread(target=_submit_successor, args=(autoscaler, root),
                     name="tsslurm-rotation", daemon=True).start()


def _submit_successor(autoscaler: Autoscaler, root: Path) -> None:
    try:
        successor = broker_job.submit_successor(root)
    except (UserError, OSError) as error:
        log.error("SIGUSR1: could not submit the successor broker job: %s", error)
        return
    log.warning("SIGUSR1: the time limit is near; successor broker job %s submitted", successor)
    autoscaler.broker.call_soon(lambda now: autoscaler.log.event(now, "rotation",
                                                                 successor=successor))


DEMO_PROMPT = "Once upon a time"


def _start_demo(root: Path, say: Callable[[str], None]) -> None:
    threading.Thread(target=_demo, args=(root, say), name="tsslurm-demo", daemon=True).start()


def _demo(root: Path, say: Callable[[str], None], timeout_s: float = 600.0) -> None:
    """Once a worker can answer, send one prompt and print the answer (`tsslurm up --demo`)."""
    from tsslurm.broker.status import read_status
    from tsslurm.client import Client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(root)
        if status is not None and any(p.ready for p in status.pools if p.role != "prefill"):
            break
        time.sleep(0.5)
    try:
        with Client(state_dir=root, timeout_s=120) as client:
            result = client.generate(DEMO_PROMPT, 32)
    except UserError as error:
        say(f"demo request failed: {error}")
        return
    answer = result.text if result.text is not None else result.token_ids
    say(f"demo: {DEMO_PROMPT!r} -> {answer!r} ({result.completion_tokens} tokens, "
        f"{result.latency_s:.2f} s); serving until Ctrl-C. Try: tsslurm generate \"Hello\"")
