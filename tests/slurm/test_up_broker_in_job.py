"""The broker itself in a small CPU Slurm job (`tsslurm up --broker-in-job`), for sites whose
login nodes forbid long-running processes: the command returns once the broker (on a compute
node) serves; clients find it through the connection file in the shared state directory;
`tsslurm status` reads its status there; `tsslurm down` stops it and its workers, and its job
ends on its own."""

from __future__ import annotations

import json

import pytest
from slurm_helpers import wait_for
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    live_jobs,
    mock_profile_data,
    ready,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(150)


def test_the_broker_runs_in_a_cpu_job(slurm, slurm_deployments) -> None:  # noqa: F811
    data = mock_profile_data()
    data["pools"] = {"prefill": {"min": 0, "max": 0}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    d = slurm_deployments(data)
    submitted = d.cli("up", "--backend", "slurm", "--job-prefix", slurm.prefix,
                      "--broker-in-job", "--broker-partition", "cpu", timeout_s=120)
    assert submitted.returncode == 0, submitted.stderr
    broker_job = json.loads((d.state / "broker-job.json").read_text())["job_id"]
    status = d.wait(ready("decode"), "a decoder", timeout_s=60)
    job = wait_for(slurm.adapter, broker_job, {"RUNNING"})
    assert job.partition == "cpu" and status.host == job.nodes, "the broker runs in its job"
    assert d.state.joinpath("connection.json").exists()

    with d.sync_client(timeout_s=30) as client:
        prompt = [72, 105, 33]
        assert client.generate(prompt, 12).token_ids == mock_continuation(prompt, 12)
    shown = d.cli("status")
    assert shown.returncode == 0 and f"on {job.nodes}" in shown.stdout

    assert d.cli("down").returncode == 0
    ended = wait_for(slurm.adapter, broker_job, {"COMPLETED", "CANCELLED", "FAILED"}, 30)
    assert ended.state == "COMPLETED", "the broker stopped on its own after the down"
    assert not live_jobs(slurm)
