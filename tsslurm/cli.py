"""The `tsslurm` command line. Thin: each command parses, loads the profile, calls one library
function and prints. Heavy imports happen inside the command that needs them, so `--help` is
instant on a login node."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tsslurm import __version__

DEFAULT_PROFILE = "local-tiny"
_STARTED = time.monotonic()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsslurm")
def cli() -> None:
    """Elastic prefill/decode-disaggregated LLM serving on Slurm, scaled by token velocity."""


@cli.command("check-profile")
@click.argument("profile", default=DEFAULT_PROFILE)
def check_profile(profile: str) -> None:
    """Validate a profile (a path, or a name under profiles/) and summarise it."""
    from tsslurm.profile import load_profile

    loaded = load_profile(profile)
    parts = ", ".join(f"{p.name} ({p.gres} x{p.gpus_per_instance})" for p in loaded.partitions)
    click.echo(f"{loaded.deployment}: model {loaded.model.name}, engine {loaded.engine.kind}, "
               f"policy {loaded.policy.name}, partitions {parts}")


@cli.command("build-tiny-model")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of tokenizer and weights")
@click.option("--profile", default=DEFAULT_PROFILE, show_default=True,
              help="Profile whose model.path is the default DIRECTORY")
def build_tiny_model(directory: Path | None, seed: int, profile: str) -> None:
    """Build the tiny test model (Llama, 0.8 M parameters, byte-level BPE) with no download."""
    from tsslurm.models.tiny import build_tiny_model as build
    from tsslurm.profile import load_profile

    target = directory if directory is not None else Path(load_profile(profile).model.path)
    click.echo(f"tiny model ready in {build(target, seed)}")


@cli.command("broker")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Deployment state directory (default: the profile's state_dir)")
@click.option("--host", default=None, help="Address to bind (default: the profile's broker.host)")
@click.option("--client-port", type=click.IntRange(0, 65535), default=None)
@click.option("--worker-port", type=click.IntRange(0, 65535), default=None)
@click.option("--log-level", default="INFO", show_default=True)
def broker(profile: str, state_dir: Path | None, host: str | None, client_port: int | None,
           worker_port: int | None, log_level: str) -> None:
    """Run the broker for a profile, without autoscaling (workers are started separately)."""
    import logging

    from tsslurm.broker.run import serve
    from tsslurm.profile import load_profile
    from tsslurm.profile import state_dir as profile_state_dir

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s "
                                                        "%(message)s")
    loaded = load_profile(profile)
    root = state_dir or profile_state_dir(loaded)
    overrides = {k: v for k, v in (("host", host), ("client_port", client_port),
                                   ("worker_port", worker_port)) if v is not None}
    serve(loaded, root, on_ready=lambda c: click.echo(
        f"broker {c.deployment} (pid {c.broker_pid}): clients {c.client_address}, workers "
        f"{c.worker_address}, state {root}", err=True), **overrides)


@cli.command("up")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True)
@click.option("--backend", type=click.Choice(["slurm", "local"]), default=None,
              help="Where workers run [slurm when the profile's partitions are in a reachable "
                   "cluster, else local]")
@click.option("--policy", default=None, help="Policy reference overriding the profile's "
                                             "(tokenscale, aibrix@kv_target=0.5, module:function)")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Deployment state directory (default: the profile's state_dir)")
@click.option("--detach", is_flag=True, help="Run as a daemon (pid file in the state directory)")
@click.option("--broker-in-job", is_flag=True,
              help="Run the broker itself in a small CPU Slurm job (login nodes that forbid "
                   "long-running processes)")
@click.option("--broker-partition", default="cpu", show_default=True,
              help="Partition of the --broker-in-job job")
@click.option("--broker-time", default="1-00:00:00", show_default=True,
              help="Time limit of the --broker-in-job job")
@click.option("--take-over", is_flag=True, hidden=True,
              help="Internal: the successor of the broker's job takes over from the running one")
@click.option("--job-prefix", default=None, help="Job names <prefix>-<role> [tsslurm-<deployment>]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus port (0: any free port) [the profile's broker.metrics_port]")
@click.option("--demo", is_flag=True, help="Send one prompt once a worker is ready; print it")
@click.option("--log-level", default="INFO", show_default=True)
def up(**options: object) -> None:
    """Start a deployment: the broker, its autoscaler and the workers; serve until Ctrl-C."""
    import logging

    from tsslurm.broker.up import UpOptions

    chosen = UpOptions(**options)  # type: ignore[arg-type]
    logging.basicConfig(level=chosen.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    say = lambda message: click.echo(message, err=True)
    if chosen.broker_in_job:
        from tsslurm.broker.control import broker_in_job

        broker_in_job(chosen, say)
    elif chosen.detach:
        from tsslurm.broker.control import detach

        detach(chosen, say)
    else:
        from tsslurm.broker.up import run

        run(chosen, say)


def _deployment_root(profile: str, state_dir: Path | None) -> Path:
    from tsslurm.profile import load_profile
    from tsslurm.profile import state_dir as profile_state_dir

    return state_dir.expanduser() if state_dir else profile_state_dir(load_profile(profile))


@cli.command("down")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--now", is_flag=True, help="Cancel every job at once instead of draining")
def down(profile: str, state_dir: Path | None, now: bool) -> None:
    """Drain and cancel every job of a deployment, then stop its broker."""
    from tsslurm.broker.control import down as take_down

    take_down(_deployment_root(profile, state_dir), now, lambda m: click.echo(m, err=True))


@cli.command("status")
@click.option("--profile", "-p", default=DEFAULT_PROFILE, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="The whole status as JSON")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C")
def status(profile: str, state_dir: Path | None, as_json: bool, watch: bool) -> None:
    """Pools, jobs, arrival rates vs provisioned velocities, SLO attainment, last decisions."""
    from tsslurm.broker.control import status_report

    root = _deployment_root(profile, state_dir)
    while True:
        report = status_report(root, as_json)
        click.echo(("\x1b[2J\x1b[H" if watch and not as_json else "") + report)
        if not watch:
            return
        time.sleep(1.0)


@cli.command("generate")
@click.argument("prompt")
@click.option("--max-tokens", "-n", type=click.IntRange(1), default=64, show_default=True)
@click.option("--stream/--no-stream", default=False, help="Print tokens as they arrive")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--profile", "-p", default=None, help="Find the deployment by its profile")
@click.option("--credentials", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A credentials file issued for you by the deployment's owner")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds to wait for the whole answer")
def generate(prompt: str, max_tokens: int, stream: bool, state_dir: Path | None,
             profile: str | None, credentials: Path | None, temperature: float,
             timeout: float) -> None:
    """Send one prompt to a running deployment and print the answer."""
    from tsslurm.client import Client
    from tsslurm.protocol import Sampling

    if state_dir is None and credentials is None:
        from tsslurm.profile import load_profile
        from tsslurm.profile import state_dir as profile_state_dir

        state_dir = profile_state_dir(load_profile(profile or DEFAULT_PROFILE))
    sampling = Sampling(temperature=temperature)
    with Client(state_dir=state_dir, credentials=credentials, timeout_s=timeout) as client:
        if stream:
            for chunk in client.stream(prompt, max_tokens, sampling):
                piece = chunk.text if chunk.text is not None else \
                    "".join(f" {t}" for t in chunk.token_ids)
                click.echo(piece, nl=False)
            click.echo()
        else:
            result = client.generate(prompt, max_tokens, sampling)
            click.echo(result.text if result.text is not None else result.token_ids)


@cli.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (localhost unless told otherwise)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="0: any free port (gateway.json in the state directory names it)")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The deployment's state directory (default: the profile's)")
@click.option("--profile", "-p", default=None, help="Find the deployment by its profile")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds a request may take before it fails with 504")
@click.option("--max-in-flight", type=click.IntRange(1), default=4096, show_default=True,
              help="Requests served at once; more get 429")
@click.option("--create-key", "key_name", metavar="NAME", default=None,
              help="Create an API key named NAME, print it (shown once) and exit")
@click.option("--log-level", default="warning", show_default=True)
def gateway(host: str, port: int, state_dir: Path | None, profile: str | None, timeout: float,
            max_in_flight: int, key_name: str | None, log_level: str) -> None:
    """Serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) for a running
    deployment. API keys live in the state directory's api_keys file; the first start makes one."""
    import logging

    from tsslurm.gateway.keys import create_key
    from tsslurm.gateway.serve import GatewaySettings, Ready, serve_gateway

    if state_dir is None:
        from tsslurm.profile import load_profile
        from tsslurm.profile import state_dir as profile_state_dir

        state_dir = profile_state_dir(load_profile(profile or DEFAULT_PROFILE))
    if key_name is not None:
        from tsslurm.statedir import StateDir

        click.echo(create_key(StateDir.open(state_dir).root, key_name))
        return
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s "
                                                        "%(message)s")

    def ready(event: Ready) -> None:
        if event.new_key is not None:
            click.echo(f"created the deployment's first API key (shown once): {event.new_key}",
                       err=True)
        click.echo(f"gateway for {event.info.model} on {event.info.url}/v1 (pid {event.info.pid}, "
                   f"chat template: {event.template})", err=True)

    settings = GatewaySettings(state_dir=state_dir, request_timeout_s=timeout,
                               max_in_flight=max_in_flight)
    serve_gateway(settings, host, port, on_ready=ready, log_level=log_level)


@cli.command("simulate")
@click.option("--trace", "trace", required=True,
              help="Azure CSV, BurstGPT CSV or Mooncake JSONL (format detected); FILE,FILE mixes")
@click.option("--profile", "profile", required=True, help="Profile path or name under profiles/")
@click.option("--policy", "policy", required=True, help="NAME[,NAME...] or all")
@click.option("--scale", type=float, default=None, help="Request-rate scale [1]")
@click.option("--peak-instances", type=float, default=None,
              help="Scale the rate so the busiest 10 s need about N instances")
@click.option("--window", default=None, help="START:END seconds of the trace")
@click.option("--speedup", type=float, default=1.0, show_default=True,
              help="Arrivals F times as fast (as `tsslurm replay --speedup F` sends them)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", type=int, default=1, show_default=True, help="Average over K seeds")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--processes", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar and no table")
def simulate(**options: object) -> None:
    """Replay a trace through the policies on the simulated cluster; compare with the oracles."""
    from tsslurm.sim.command import SimulateArgs, run_simulate

    run_simulate(SimulateArgs(**options))  # type: ignore[arg-type]


@cli.command("replay")
@click.option("--trace", "trace", required=True,
              help="Azure CSV, BurstGPT CSV or Mooncake JSONL (format detected); FILE,FILE mixes")
@click.option("--window", default=None, help="START:END seconds of the trace")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Request-rate scale")
@click.option("--speedup", type=float, default=1.0, show_default=True,
              help="Send the trace F times as fast as it was recorded")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the rate-scale copies and the prompts")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The deployment's state directory")
@click.option("--profile", "-p", default=None,
              help="The deployment's profile (finds its state directory; default: the profile "
                   "the deployment recorded)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds a request may take")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress lines and no table")
def replay(**options: object) -> None:
    """Send a trace to a live deployment at its recorded times; report as `simulate` does."""
    from tsslurm.replay.command import ReplayArgs, run_replay

    run_replay(ReplayArgs(**options), lambda line: click.echo(line, err=True))  # type: ignore[arg-type]


@cli.command("profile")
@click.option("--profile", "-p", "profile", default=DEFAULT_PROFILE, show_default=True,
              help="Profile path or name under profiles/")
@click.option("--partition", default=None, help="Partition to measure [the profile's first]")
@click.option("--local", is_flag=True, help="Measure this machine (a subprocess), not a Slurm job")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a new profile here instead of updating PROFILE")
@click.option("--quick", is_flag=True, help="Fewer points and repeats (a few minutes)")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=14.0,
              show_default=True, help="Queue-wait history to read from Slurm's accounting")
@click.option("--job-name", default=None, help="Slurm job name [tsslurm-DEPLOYMENT-profile-PART]")
def profile(**options: object) -> None:
    """Measure V_P, the decode step, V_D per bucket, V_N, KV size, start-up and queue wait of one
    partition (as a Slurm job through submitit) and write them into the profile."""
    from tsslurm.profile import load_profile
    from tsslurm.profiler.command import ProfileArgs, choose_partition, run_profile, summary

    args = ProfileArgs(**options)  # type: ignore[arg-type]
    before = choose_partition(load_profile(args.profile), args.partition)
    written = run_profile(args, lambda line: click.echo(line, err=True))
    click.echo(summary(written, before))


@cli.group("dev-cluster")
def dev_cluster() -> None:
    """A private single-host Slurm cluster for development and CI (root, Debian)."""


_dir_option = click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Private directory of the cluster [env TSSLURM_DEVCLUSTER_DIR; default <repo>/.devcluster]")


@dev_cluster.command("up")
@_dir_option
@click.option("--nodes-per-partition", type=click.IntRange(1, 8), default=None,
              help="Nodes in each of the a100 and h100 partitions [1, or as before]")
@click.option("--accounting/--no-accounting", default=None,
              help="slurmdbd + MariaDB (real sacct) [on, or as before]")
@click.option("--port-base", type=click.IntRange(1024, 65000), default=None,
              help="Ports used: base+6 (MariaDB), +17 (slurmctld), +19 (slurmdbd), +21.. (slurmd)")
@click.option("--enforce-memory/--no-enforce-memory", default=None,
              help="Kill jobs over their --mem, ending OUT_OF_MEMORY [off, or as before]")
def dev_cluster_up(root: Path | None, nodes_per_partition: int | None, accounting: bool | None,
                   port_base: int | None, enforce_memory: bool | None) -> None:
    """Install (apt) and start the cluster, or heal it when it already runs."""
    from tsslurm.devcluster.cluster import resolve_layout, up

    layout = resolve_layout(root, nodes_per_partition=nodes_per_partition, accounting=accounting,
                            port_base=port_base, enforce_memory=enforce_memory)
    took = up(layout, _progress)
    click.echo(f"dev cluster up in {took:.1f} s: export SLURM_CONF={layout.slurm_conf}")


@dev_cluster.command("down")
@_dir_option
@click.option("--wipe", is_flag=True, help="Also delete the directory (state, logs, database)")
def dev_cluster_down(root: Path | None, wipe: bool) -> None:
    """Cancel every job and stop the daemons this cluster started."""
    from tsslurm.devcluster.cluster import down, resolve_layout

    down(resolve_layout(root), wipe, _progress)


@dev_cluster.command("status")
@_dir_option
def dev_cluster_status(root: Path | None) -> None:
    """Daemons, nodes and partitions."""
    from tsslurm.devcluster.cluster import resolve_layout, status

    click.echo(status(resolve_layout(root)))


def _progress(message: str) -> None:
    click.echo(f"dev-cluster [{time.monotonic() - _STARTED:5.1f}s] {message}", err=True)


def main() -> None:
    """Entry point: user errors print their message and exit 1, never a traceback."""
    from tsslurm.errors import UserError

    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
