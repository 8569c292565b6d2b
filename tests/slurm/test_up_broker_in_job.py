"""The broker itself in a small CPU Slurm job (`tsslurm up --broker-in-job`), for sites whose
login nodes forbid long-running processes: the command returns once the broker (on a compute
node) serves; clients find it through the connection file in the shared state directory;
`tsslurm status` reads its status there; `tsslurm down` stops it and its workers, and its job
ends on its own. Near its time limit (Slurm's SIGUSR1) the broker's job hands over to a successor
job, which re-adopts the workers: they keep running, and clients find the new broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from slurm_helpers import wait_for
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    live_jobs,
    mock_profile_data,
    ready,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(240)


def one_decoder_in_a_broker_job(slurm, slurm_deployments):  # noqa: F811
    data = mock_profile_data()
    data["pools"] = {"prefill": {"min": 0, "max": 0}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    d = slurm_deployments(data)
    submitted = d.cli("up", "--backend", "slurm", "--job-prefix", slurm.prefix,
                      "--broker-in-job", "--broker-partition", "cpu", timeout_s=120)
    assert submitted.returncode == 0, submitted.stderr
    return d


def broker_job_id(d) -> str:
    return json.loads((d.state / "broker-job.json").read_text())["job_id"]


def generates(d) -> bool:
    with d.sync_client(timeout_s=60) as client:
        prompt = [72, 105, 33]
        return client.generate(prompt, 12).token_ids == mock_continuation(prompt, 12)


def wait_until(value: Callable[[], object], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := value()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:g} s"
        time.sleep(0.1)
    return result


def test_the_broker_runs_in_a_cpu_job(slurm, slurm_deployments) -> None:  # noqa: F811
    d = one_decoder_in_a_broker_job(slurm, slurm_deployments)
    broker_job = broker_job_id(d)
    status = d.wait(ready("decode"), "a decoder", timeout_s=60)
    job = wait_for(slurm.adapter, broker_job, {"RUNNING"})
    assert job.partition == "cpu" and status.host == job.nodes, "the broker runs in its job"
    assert d.state.joinpath("connection.json").exists()

    assert generates(d)
    shown = d.cli("status")
    assert shown.returncode == 0 and f"on {job.nodes}" in shown.stdout

    assert d.cli("down").returncode == 0
    ended = wait_for(slurm.adapter, broker_job, {"COMPLETED", "CANCELLED", "FAILED"}, 30)
    assert ended.state == "COMPLETED", "the broker stopped on its own after the down"
    assert not live_jobs(slurm)


def test_near_its_time_limit_the_broker_job_hands_over(slurm, slurm_deployments) -> None:  # noqa: F811
    d = one_decoder_in_a_broker_job(slurm, slurm_deployments)
    first = broker_job_id(d)
    before = d.wait(ready("decode"), "a decoder", timeout_s=60)
    workers = {job.job_id for job in live_jobs(slurm) if job.job_id != first}
    assert workers and generates(d)

    slurm.adapter.cancel([first], signal="USR1", batch_only=True)  # Slurm's time-limit warning
    ended = wait_for(slurm.adapter, first, {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"}, 120)
    assert ended.state == "COMPLETED", "the old broker left on its own after handing over"
    second = wait_until(lambda: broker_job_id(d) != first and broker_job_id(d), 60,
                        "the successor recorded as the deployment's broker job")
    after = d.wait(lambda s: s.pid != before.pid or s.host != before.host, "the successor",
                   timeout_s=60)
    d.wait(lambda s: s.phase == "serving" and ready("decode")(s), "the worker back", timeout_s=60)
    assert wait_for(slurm.adapter, second, {"RUNNING"}).nodes == after.host
    assert generates(d), "clients find the new broker through the connection file"
    assert {job.job_id for job in live_jobs(slurm) if job.job_id != second} == workers, \
        "the workers kept running and were re-adopted, none submitted again"
    assert [e["successor"] for e in d.events("rotation")] == [second]
    assert d.events("handover") and workers <= set(d.events("adopted")[-1]["jobs"])

    assert d.cli("down").returncode == 0
    assert wait_for(slurm.adapter, second, {"COMPLETED", "CANCELLED", "FAILED"}, 30).state \
        == "COMPLETED"
    assert not live_jobs(slurm)
