"""Batched polling on the real cluster: 200 jobs in one squeue, final states from one sacct and
then from the cache; a failed poll keeps the last-known states and says it is stale."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from slurm_helpers import partition, shell_job, wait_for

from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmAdapter

JOBS = 200


class CountingAdapter(SlurmAdapter):
    """The real adapter, recording which commands it ran."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def run(self, argv, stdin=None, timeout_s=None):
        self.commands.append(argv[0])
        return super().run(argv, stdin=stdin, timeout_s=timeout_s)


def _poll_counting(adapter: CountingAdapter, ids: list[str]):
    adapter.commands.clear()
    started = time.perf_counter()
    result = adapter.poll(ids)
    return result, list(adapter.commands), time.perf_counter() - started


@pytest.mark.timeout(120)
def test_two_hundred_jobs_are_polled_in_one_command(slurm, tmp_path: Path) -> None:
    adapter = CountingAdapter(slurm.adapter.env)
    part = Partition(name="cpu", gres="", cpus_per_instance=1, mem="10M", template="cpu.sbatch",
                     time_limit="00:05:00", sbatch_options={"hold": ""})
    ids = [adapter.submit_job(shell_job(slurm.name(f"n{i}"), part, tmp_path, "exit 0"))
           for i in range(JOBS)]
    assert len(set(ids)) == JOBS

    live, commands, took = _poll_counting(adapter, ids)
    print(f"poll of {JOBS} pending jobs: {took * 1000:.0f} ms, commands {commands}")
    assert commands == ["squeue"] and not live.stale and not live.missing
    assert all(s.pending and s.reason == "JobHeldUser" for s in live.statuses.values())

    adapter.cancel(ids)
    deadline = time.monotonic() + 30
    ended = adapter.poll(ids)
    while not all(s.final and s.source != "squeue" for s in ended.statuses.values()):
        assert time.monotonic() < deadline, "cancelled jobs never reached a final state"
        time.sleep(0.5)
        ended = adapter.poll(ids)
    assert {s.state for s in ended.statuses.values()} == {"CANCELLED"}

    cached, commands, took = _poll_counting(adapter, ids)
    print(f"poll of {JOBS} finished jobs: {took * 1000:.1f} ms, commands {commands}")
    assert commands == [] and cached.statuses == ended.statuses


@pytest.mark.timeout(60)
def test_a_failed_poll_keeps_last_known_states_and_is_stale(slurm, tmp_path: Path) -> None:
    adapter = slurm.adapter
    spec = shell_job(slurm.name("steady"), partition("cpu"), tmp_path, "sleep 300")
    job_id = adapter.submit_job(spec)
    running = wait_for(adapter, job_id, {"RUNNING"})
    good_conf = adapter.env["SLURM_CONF"]
    bad_conf = tmp_path / "slurm.conf"
    bad_conf.write_text(Path(good_conf).read_text().replace("SlurmctldPort=", "SlurmctldPort=1"))
    adapter.env["SLURM_CONF"] = str(bad_conf)
    adapter.timeout_s = 3.0
    try:
        stale = adapter.poll([job_id])
    finally:
        adapter.env["SLURM_CONF"] = good_conf
        adapter.timeout_s = 20.0
    assert stale.stale and stale.error and "squeue" in stale.error
    assert stale.statuses[job_id].state == "RUNNING"
    assert stale.statuses[job_id].job_id == running.job_id
    fresh = adapter.poll([job_id])
    assert not fresh.stale and fresh.error is None and fresh.statuses[job_id].running
