"""Crash recovery on Slurm (mock engines as real Slurm jobs): the broker of a live deployment is
killed with -9 while a client's request streams; `tsslurm up` run again with the same deployment
binds the same address, re-adopts the jobs its SQLite store and Slurm know - the running ones
(their workers reconnect), the pending one (kept, not submitted again) - closes the one that
ended meanwhile (and replaces it), and the client's request completes after its retry.

Every job is submitted held (the partition's `hold` option); the test releases those it wants
running, so which jobs pend is the test's choice, not the scheduler's timing."""

from __future__ import annotations

import random
import time

import pytest
from up_support import (  # noqa: F401 (slurm_deployments is a fixture)
    StreamInBackground,
    counts,
    live_jobs,
    mock_profile_data,
    ready,
    slurm_deployments,
)

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(180)


def _profile() -> dict:
    data = mock_profile_data()
    data["partitions"][0]["sbatch_options"] = {"hold": ""}
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 2, "max": 2}}
    return data


def _held(slurm, role: str, count: int, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = [j.job_id for j in live_jobs(slurm)
                if j.pending and j.reason == "JobHeldUser" and j.name.endswith(f"-{role}")]
        if len(held) >= count:
            return held
        time.sleep(0.1)
    raise AssertionError(f"no {count} held {role} jobs: {live_jobs(slurm)}")


def test_a_broker_killed_with_9_is_replaced_and_readopts_its_jobs(
        slurm, slurm_deployments) -> None:  # noqa: F811
    d = slurm_deployments(_profile())
    d.start()
    slurm.adapter.release(_held(slurm, "prefill", 1) + _held(slurm, "decode", 1))
    before = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s)
                    and counts(s, "convertible")["pending"] == 2, "the pools", 60)
    address = before.client_address
    running = {j.job_id for j in before.jobs if j.state == "ready"}
    kept, gone = sorted(j.job_id for j in before.jobs if j.role == "convertible")

    prompt = [random.Random(6).randrange(32, 127) for _ in range(60)]
    stream = StreamInBackground(d, prompt, 400, timeout_s=120)
    d.kill9()
    slurm.adapter.cancel([gone])
    after = d.start()
    assert after.client_address == address, "the broker came back on the same address"
    assert stream.finish() == mock_continuation(prompt, 400)

    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "workers back", 60)
    adopted = d.events("adopted")[-1]
    assert sorted(adopted["jobs"]) == sorted(running | {kept})
    assert adopted["closed"] == [gone]
    assert running <= {j.job_id for j in status.jobs}
    assert kept in {j.job_id for j in status.jobs if j.state == "pending"}, "kept, not resubmitted"
    replacement = _held(slurm, "convertible", 2)
    assert set(replacement) - {kept}, "the ended convertible is replaced"
    slurm.adapter.release(replacement)
    status = d.wait(lambda s: counts(s, "convertible")["ready"] == 2, "the convertibles", 60)
    submitted = [e["job_id"] for e in d.events("job") if e["reason"] == "submitted"]
    assert len(submitted) == len(set(submitted)) == 5, "4 at first, 1 replacement: no duplicate"
    assert d.down().returncode == 0
    assert not live_jobs(slurm), "nothing orphaned"
