"""A pending reason that means "will not start" (mock engines as real Slurm jobs): the profile's
preferred partition submits every job with a dependency Slurm can never satisfy (`afternotok` on
a job that completed), so its jobs pend with DependencyNeverSatisfied. The broker reads that
reason, cancels those jobs, marks the partition unavailable (status, `status --json`, the event
log and /metrics all say so and why) and places the pools on the other partition, which serves.
`down --now` then cancels everything at once, without draining, and stops the broker."""

from __future__ import annotations

import json
import urllib.request

import pytest
from slurm_helpers import partition, shell_job, wait_for
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    live_jobs,
    mock_profile_data,
    partition_like,
    ready,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(150)

NEVER = "DependencyNeverSatisfied"


def _completed_job(slurm, log_dir) -> str:
    spec = shell_job(slurm.name("done"), partition("cpu"), log_dir, "true")
    job_id = slurm.adapter.submit_job(spec)
    wait_for(slurm.adapter, job_id, {"COMPLETED"}, timeout_s=30)
    return job_id


def _profile(done_job: str) -> dict:
    data = mock_profile_data()
    a100 = partition_like(data, "a100", sbatch_options={"dependency": f"afternotok:{done_job}"})
    h100 = partition_like(data, "h100", gres="gpu:h100", template="h100.sbatch",
                          queue_wait={"distribution": "fixed", "mean_s": 20})
    data["partitions"] = [a100, h100]
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    return data


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def test_a_job_that_will_not_start_moves_the_pools_to_another_partition(
        slurm, slurm_deployments, tmp_path) -> None:  # noqa: F811
    d = slurm_deployments(_profile(_completed_job(slurm, tmp_path / "logs")), "--metrics-port", "0")
    d.start()
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "the pools", 60)
    assert {j.partition for j in status.jobs} == {"h100"}
    refused = [e for e in d.events("job") if e["partition"] == "a100" and e["new"] == "ended"]
    assert refused and all(NEVER in e["reason"] for e in refused), refused
    assert all(e["old"] == "pending" for e in refused), "cancelled while pending: never ran"
    notices = [e for e in d.events("notice") if e["notice"] == "partition"]
    assert any(e["subject"] == "a100" and NEVER in e["text"] for e in notices), notices

    shown = json.loads(d.cli("status", "--json").stdout)
    a100 = next(p for p in shown["partitions"] if p["name"] == "a100")
    assert a100["available"] is False and NEVER in a100["why"]
    assert {j["partition"] for j in shown["jobs"]} == {"h100"}
    assert {j["job_id"] for j in shown["ended"]} >= {e["job_id"] for e in refused}
    scraped = _scrape(status.metrics_port)
    assert 'tsslurm_partition_available{partition="a100"} 0.0' in scraped
    assert 'tsslurm_partition_available{partition="h100"} 1.0' in scraped
    assert 'tsslurm_pool_instances{partition="h100",role="decode",state="ready"} 1.0' in scraped

    with d.sync_client(timeout_s=30) as client:
        prompt = [80, 105, 110, 103]
        assert client.generate(prompt, 16).token_ids == mock_continuation(prompt, 16)

    done = d.down("--now", timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert d.process.returncode == 0
    down_at = d.events("down")[-1]
    assert down_at["now"] is True
    after = [e for e in d.events("job") if e["time"] >= down_at["time"]]
    assert not [e for e in after if e["new"] == "draining"], "--now cancels without draining"
    assert {e["job_id"] for e in after if e["new"] == "ended"} == {j.job_id for j in status.jobs}
    assert not live_jobs(slurm)
