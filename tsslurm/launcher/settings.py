"""The launcher's settings, read from the environment the sbatch template (or a test) sets.

Variables (the contract with tsslurm/slurm's sbatch rendering):
  TSSLURM_ROLE             prefill | decode | convertible  (also: prefiller, decoder)   required
  TSSLURM_PROFILE          profile path or name (profiles/<name>.yaml)                  required
  TSSLURM_PARTITION        partition name in the profile (default: its first partition)
  TSSLURM_STATE_DIR        deployment state directory: keys and connection.json
                           (default: the profile's state_dir)
  TSSLURM_CONNECTION_FILE  the broker's connection file (default: STATE_DIR/connection.json)
  TSSLURM_BROKER_ADDRESS   tcp://host:port of the broker's worker socket; overrides the
                           connection file's address (keys still come from the state dir)
  TSSLURM_WORKER_ID        default: <role>-<job id>, or <role>-<host>-<pid> without one
  TSSLURM_JOB_ID           the job id READY reports when the worker is not a Slurm job (the local
                           backend's ids); default SLURM_JOB_ID
  TSSLURM_LOG_LEVEL        default INFO
  TSSLURM_MOCK_FAIL_AFTER_S  mock engine only: die that many seconds after starting (tests of
                           fatal engine errors)
  SLURM_JOB_ID, SLURMD_NODENAME   set by Slurm: the job id and node reported in READY"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import msgspec

from tsslurm.errors import UserError

ENV_ROLE = "TSSLURM_ROLE"
ENV_PROFILE = "TSSLURM_PROFILE"
ENV_PARTITION = "TSSLURM_PARTITION"
ENV_STATE_DIR = "TSSLURM_STATE_DIR"
ENV_CONNECTION_FILE = "TSSLURM_CONNECTION_FILE"
ENV_BROKER_ADDRESS = "TSSLURM_BROKER_ADDRESS"
ENV_WORKER_ID = "TSSLURM_WORKER_ID"
ENV_JOB_ID = "TSSLURM_JOB_ID"
ENV_LOG_LEVEL = "TSSLURM_LOG_LEVEL"
ENV_MOCK_FAIL_AFTER_S = "TSSLURM_MOCK_FAIL_AFTER_S"

ROLES = {"prefill": "prefiller", "prefiller": "prefiller", "decode": "decoder",
         "decoder": "decoder", "convertible": "convertible"}


class SettingsError(UserError):
    """The environment does not say how to run this worker."""


class LauncherSettings(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    """Protocol role: prefiller, decoder or convertible."""
    profile: str
    partition: str | None = None
    state_dir: str | None = None
    connection_file: str | None = None
    broker_address: str | None = None
    worker_id: str
    job_id: str | None = None
    node: str = ""
    log_level: str = "INFO"
    mock_fail_after_s: float | None = None


def settings_from_env(env: Mapping[str, str] = os.environ) -> LauncherSettings:
    role = env.get(ENV_ROLE, "")
    if role not in ROLES:
        raise SettingsError(f"{ENV_ROLE}={role!r}: set it to prefill, decode or convertible")
    profile = env.get(ENV_PROFILE, "")
    if not profile:
        raise SettingsError(f"{ENV_PROFILE} is not set: the launcher needs the deployment profile")
    address = env.get(ENV_BROKER_ADDRESS) or None
    if address is not None and not address.startswith("tcp://"):
        raise SettingsError(f"{ENV_BROKER_ADDRESS}={address!r}: expected tcp://host:port")
    job_id = env.get(ENV_JOB_ID) or env.get("SLURM_JOB_ID") or None
    fail_after = env.get(ENV_MOCK_FAIL_AFTER_S) or None
    try:
        mock_fail_after_s = float(fail_after) if fail_after is not None else None
    except ValueError:
        raise SettingsError(f"{ENV_MOCK_FAIL_AFTER_S}={fail_after!r}: expected seconds") from None
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    default_id = f"{ROLES[role]}-{job_id}" if job_id else f"{ROLES[role]}-{node}-{os.getpid()}"
    return LauncherSettings(
        role=ROLES[role], profile=profile, partition=env.get(ENV_PARTITION) or None,
        state_dir=env.get(ENV_STATE_DIR) or None,
        connection_file=env.get(ENV_CONNECTION_FILE) or None, broker_address=address,
        worker_id=env.get(ENV_WORKER_ID) or default_id, job_id=job_id, node=node,
        log_level=env.get(ENV_LOG_LEVEL, "INFO").upper(), mock_fail_after_s=mock_fail_after_s)


def launcher_env(role: str, profile: str, partition: str, state_dir: str, *,
                 job_id: str | None = None, broker_address: str | None = None,
                 log_level: str | None = None) -> dict[str, str]:
    """The environment a job needs to run the launcher (what the autoscaler's backends export)."""
    env = {ENV_ROLE: role, ENV_PROFILE: profile, ENV_PARTITION: partition,
           ENV_STATE_DIR: state_dir}
    for key, value in ((ENV_JOB_ID, job_id), (ENV_BROKER_ADDRESS, broker_address),
                       (ENV_LOG_LEVEL, log_level)):
        if value is not None:
            env[key] = value
    return env


def connection_file(settings: LauncherSettings, state_dir: Path) -> Path:
    return Path(settings.connection_file).expanduser() if settings.connection_file \
        else state_dir / "connection.json"
