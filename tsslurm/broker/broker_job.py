"""The broker's own Slurm job (`tsslurm up --broker-in-job`): submitting it, its record in the
state directory (broker-job.json), rotating it before its time limit, and ending it on `down`.

Rotation. Slurm warns the job with SIGUSR1 ahead of its time limit; the broker then submits a
successor job that runs `up --take-over`. Once it starts, the successor checks it is still the
deployment's successor (a `down` meanwhile withdraws it), asks the running broker to hand over
(the control file), takes the deployment's lock when that broker has left and re-adopts the
workers. Workers keep running through it (they find the new broker through the connection file)
and clients re-submit what was in flight. If the time limit comes first, the old broker hands
over on Slurm's SIGTERM instead of taking the deployment down."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tsslurm.errors import UserError
from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmAdapter
from tsslurm.slurm.render import JobSpec
from tsslurm.statedir import write_atomically

BROKER_JOB_FILE = "broker-job.json"
TAKE_OVER_FLAG = "--take-over"
WARNING_S = 900
"""SIGUSR1 this long before the time limit (at most half of it): time for the successor to
queue and start."""


class BrokerJob(msgspec.Struct, frozen=True):
    """What broker-job.json keeps: the serving broker's job, and how to submit another."""

    job_id: str
    slurm_conf: str
    name: str = ""
    partition: str = ""
    time_limit: str = ""
    log_dir: str = ""
    command: list[str] = []
    """`tsslurm up ...` in the foreground, as the job runs it."""
    successor: str | None = None
    """The job submitted to take over before this one's time limit."""


def read(root: Path) -> BrokerJob | None:
    try:
        return msgspec.json.decode((root / BROKER_JOB_FILE).read_bytes(), type=BrokerJob)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write(root: Path, job: BrokerJob) -> None:
    write_atomically(root / BROKER_JOB_FILE, msgspec.json.encode(job))


def adapter_for(job: BrokerJob) -> SlurmAdapter:
    return SlurmAdapter.for_conf(job.slurm_conf) if job.slurm_conf else SlurmAdapter()


def job_spec(job: BrokerJob, command: list[str]) -> JobSpec:
    """A small CPU job (2 CPUs, 4G) running `command`."""
    part = Partition(name=job.partition, gres="", cpus_per_instance=2, mem="4G",
                     template="cpu.sbatch", time_limit=job.time_limit)
    return JobSpec(name=job.name, partition=part, log_dir=job.log_dir, command=command, gpus=0,
                   warning_s=WARNING_S)


def submit(root: Path, name: str, partition: str, time_limit: str,
           command: list[str]) -> BrokerJob:
    """Submit the broker's job and record it."""
    record = BrokerJob(job_id="", slurm_conf=os.environ.get("SLURM_CONF", ""), name=name,
                       partition=partition, time_limit=time_limit,
                       log_dir=str(root / "logs"), command=command)
    job_id = adapter_for(record).submit_job(job_spec(record, command))
    record = msgspec.structs.replace(record, job_id=job_id)
    write(root, record)
    return record


def own_job(root: Path) -> BrokerJob | None:
    """The record, when this process runs in the deployment's broker job."""
    record = read(root)
    here = os.environ.get("SLURM_JOB_ID")
    return record if record is not None and here and record.job_id == here else None


def submit_successor(root: Path) -> str:
    """Submit the job that takes over from this one; returns its id."""
    record = own_job(root)
    if record is None or not record.command:
        raise UserError("not running in this deployment's broker job: nothing to rotate")
    if record.successor:
        return record.successor
    command = [*record.command, TAKE_OVER_FLAG]
    successor = adapter_for(record).submit_job(job_spec(record, command))
    write(root, msgspec.structs.replace(record, successor=successor))
    return successor


def check_successor(root: Path) -> str:
    """This job's id, when it is still the deployment's successor; else a UserError."""
    record, here = read(root), os.environ.get("SLURM_JOB_ID", "")
    if record is None or not here or record.successor != here:
        raise UserError(f"job {here or '?'} is no longer this deployment's successor broker "
                        f"(was the deployment taken down?): not taking over")
    return here


def promote(root: Path, job_id: str) -> None:
    """The successor now serves: it is the broker job."""
    record = read(root)
    if record is not None:
        write(root, msgspec.structs.replace(record, job_id=job_id, successor=None))


def end(root: Path, say: Callable[[str], None], wait_s: float = 30.0) -> None:
    """On `down`: withdraw a successor at once, give the broker's job `wait_s` to end on its
    own (the broker stopped), then cancel it; forget the record."""
    record = read(root)
    if record is None:
        return
    adapter = adapter_for(record)
    if record.successor:
        adapter.cancel([record.successor])
        say(f"cancelled the broker's successor job {record.successor}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = adapter.poll([record.job_id]).statuses.get(record.job_id)
        if status is None or status.final:
            break
        time.sleep(0.5)
    else:
        adapter.cancel([record.job_id])
        say(f"cancelled the broker's job {record.job_id}")
    (root / BROKER_JOB_FILE).unlink(missing_ok=True)
