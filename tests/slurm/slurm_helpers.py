"""Helpers of the slurm tier: dev-cluster partitions as profile Partitions, job specs, waiting."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmAdapter
from tsslurm.slurm.parse import JobStatus
from tsslurm.slurm.render import JobSpec

SPARE_NODE = "spare-1"
"""The dev cluster's node that only tests/slurm/test_nodes.py drains or downs."""


def partition(name: str, gpus: int = 1, time_limit: str = "00:05:00") -> Partition:
    """A dev-cluster partition as a profile would describe it (small CPU and memory asks)."""
    gpu_type = {"a100": "a100", "h100": "h100", "spare": "a100"}.get(name)
    template = {"a100": "a100.sbatch", "h100": "h100.sbatch", "spare": "a100.sbatch"}
    return Partition(name=name, gres=f"gpu:{gpu_type}" if gpu_type else "",
                     gpus_per_instance=max(gpus, 1), cpus_per_instance=1, mem="100M",
                     template=template.get(name, "cpu.sbatch"), time_limit=time_limit)


def shell_job(name: str, part: Partition, log_dir: Path, script: str, gpus: int | None = None,
              **overrides: object) -> JobSpec:
    """A job whose command is a bash script (exec'd by the template, so it gets the signals)."""
    if not part.gres:
        gpus = 0
    return JobSpec(name=name, partition=part, log_dir=str(log_dir), command=["bash", "-c", script],
                   gpus=gpus, **overrides)


def log_of(spec: JobSpec, job_id: str) -> str:
    path = Path(spec.log_dir) / f"{spec.name}-{job_id}.out"
    return path.read_text() if path.exists() else ""


def wait_for(adapter: SlurmAdapter, job_id: str, states: Iterable[str],
             timeout_s: float = 30.0, interval_s: float = 0.2, accounted: bool = False) -> JobStatus:
    """Poll until the job is in one of `states` (with `accounted`, as Slurm's accounting records
    it, exit code included: squeue knows a job ended before sacct does); fails with the last
    status seen."""
    wanted = set(states)
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = adapter.poll([job_id]).statuses.get(job_id)
        if (status is not None and status.state in wanted
                and not (accounted and status.source == "squeue")):
            return status
        time.sleep(interval_s)
    raise AssertionError(f"job {job_id} not in {sorted(wanted)} after {timeout_s:g} s: {status}")


def wait_for_log(spec: JobSpec, job_id: str, text: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = log_of(spec, job_id)
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log of job {job_id}: {log_of(spec, job_id)!r}")
