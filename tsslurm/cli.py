"""The `tsslurm` command line. Thin: each command parses, loads the profile, calls one library
function and prints. Heavy imports happen inside the command that needs them, so `--help` is
instant on a login node."""

from __future__ import annotations

import sys

import click

from tsslurm import __version__

DEFAULT_PROFILE = "local-tiny"


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


@cli.group("dev-cluster")
def dev_cluster() -> None:
    """A private single-host Slurm cluster for development and CI (root, Debian)."""


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
