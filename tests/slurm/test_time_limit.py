"""A job over its time limit gets the USR1 warning first, then ends TIMEOUT.

Slurm enforces limits on a ~30 s cycle (--time=1 ends 65-82 s after the start), so the job is
submitted when the tier starts (tests/slurm/conftest.py) and this test only waits for it."""

from __future__ import annotations

import pytest
from slurm_helpers import log_of, wait_for

from tsslurm.slurm.parse import FINAL_STATES


@pytest.mark.timeout(200)
def test_job_over_its_time_limit_is_warned_then_ends_timeout(time_limit_job) -> None:
    job = time_limit_job
    done = wait_for(job.adapter, job.job_id, FINAL_STATES, timeout_s=180, interval_s=1.0)
    log = log_of(job.spec, job.job_id)
    assert done.state == "TIMEOUT", log
    assert done.time_limit_s == 60
    started = int(log.split("started at ")[1].split()[0])
    warned = int(log.split("warned at ")[1].split()[0])
    assert 0 <= warned - started < 60
