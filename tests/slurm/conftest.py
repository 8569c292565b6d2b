"""The slurm tier's session fixtures. The time-limit job is submitted when the tier starts, so
its ~70-80 s wait for Slurm's time-limit enforcement overlaps every other test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from slurm_helpers import partition, shell_job

from tsslurm.slurm.adapter import SlurmAdapter
from tsslurm.slurm.render import JobSpec

TIME_LIMIT_SCRIPT = """
trap 'echo "warned at $(date +%s)"' USR1
echo "started at $(date +%s)"
while true; do sleep 0.2; done
"""


@dataclass(frozen=True)
class TimedJob:
    job_id: str
    spec: JobSpec
    adapter: SlurmAdapter
    submitted: float


@pytest.fixture(scope="session", autouse=True)
def time_limit_job(slurm_cluster: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[TimedJob]:
    """A job with --time=1 and a USR1 warning 30 s before it, running from the tier's start."""
    adapter = SlurmAdapter.for_conf(slurm_cluster)
    spec = shell_job(f"t{uuid.uuid4().hex[:8]}-time-limit", partition("cpu", time_limit="1"),
                     tmp_path_factory.mktemp("time-limit"), TIME_LIMIT_SCRIPT, warning_s=30)
    job = TimedJob(adapter.submit_job(spec), spec, adapter, time.monotonic())
    yield job
    adapter.cancel([job.job_id])
