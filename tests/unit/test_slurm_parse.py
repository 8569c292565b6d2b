"""Parsers against output recorded from a real Slurm 22.05 cluster (tests/data/slurm/record.py).

`accounting/` was recorded with slurmdbd (real sacct), `jobcomp/` without (sacct -c). Each
scenario job is named rec-<scenario>; what each scenario did is in record.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tsslurm.slurm import parse
from tsslurm.slurm.parse import JobStatus, SlurmParseError

DATA = Path(__file__).parents[1] / "data" / "slurm"
MODES = ("accounting", "jobcomp")


def recorded(mode: str, name: str) -> str:
    return (DATA / mode / f"{name}.txt").read_text()


def by_name(jobs: dict[str, JobStatus]) -> dict[str, JobStatus]:
    """Jobs by scenario name (array tasks collapse onto the last one)."""
    return {job.name.removeprefix("rec-"): job for job in jobs.values()}


@pytest.mark.parametrize("mode", MODES)
def test_squeue_live_jobs(mode: str) -> None:
    jobs = by_name(parse.parse_squeue(recorded(mode, "squeue_live")))
    assert jobs["timeout"].state == "RUNNING" and jobs["timeout"].running
    assert jobs["timeout"].time_limit_s == 60
    assert 0 < jobs["timeout"].time_left_s <= 60
    assert jobs["timeout"].nodes == "cpu-1" and jobs["timeout"].partition == "cpu"
    assert isinstance(jobs["timeout"].start_time, datetime)
    assert jobs["held"].pending and jobs["held"].reason == "JobHeldUser"
    assert jobs["held"].nodes == "" and jobs["held"].start_time is None
    assert jobs["held"].time_limit_s is None
    assert jobs["later"].reason == "BeginTime"
    assert jobs["later"].start_time > jobs["timeout"].start_time
    assert jobs["waiting"].reason == "Dependency"
    assert jobs["failed"].state == "FAILED" and jobs["failed"].reason == "NonZeroExitCode"
    assert jobs["completed"].final and not jobs["completed"].running
    assert all(job.source == "squeue" and job.exit_code is None for job in jobs.values())


def test_squeue_pending_for_resources() -> None:
    jobs = by_name(parse.parse_squeue(recorded("accounting", "squeue_live")))
    assert jobs["resources"].pending and jobs["resources"].reason == "Resources"
    assert jobs["nodefail"].running and jobs["nodefail"].partition == "spare"


@pytest.mark.parametrize("mode", MODES)
def test_squeue_drained_and_failed_nodes(mode: str) -> None:
    draining = by_name(parse.parse_squeue(recorded(mode, "squeue_draining")))
    assert draining["cancelled"].state == "CANCELLED"
    down = by_name(parse.parse_squeue(recorded(mode, "squeue_down")))
    assert down["nodefail"].state == "NODE_FAIL" and down["nodefail"].reason == "NodeDown"
    assert down["resources"].pending and "DRAINED" in down["resources"].reason


@pytest.mark.parametrize("mode", MODES)
def test_squeue_final_states(mode: str) -> None:
    jobs = by_name(parse.parse_squeue(recorded(mode, "squeue_final")))
    assert jobs["timeout"].state == "TIMEOUT" and jobs["timeout"].reason == "TimeLimit"
    assert jobs["timeout"].time_left_s is None
    assert {job.state for job in jobs.values()} >= {"COMPLETED", "FAILED", "CANCELLED",
                                                     "TIMEOUT", "NODE_FAIL"}


def test_squeue_array_tasks_keep_their_ids() -> None:
    jobs = parse.parse_squeue(recorded("accounting", "squeue_final"))
    tasks = sorted(job_id for job_id, job in jobs.items() if job.name == "rec-array")
    assert len(tasks) == 3 and all("_" in job_id for job_id in tasks)


def test_sacct_final_states_and_exit_codes() -> None:
    jobs = by_name(parse.parse_sacct(recorded("accounting", "sacct_final")))
    assert (jobs["completed"].state, jobs["completed"].exit_code) == ("COMPLETED", 0)
    assert (jobs["failed"].state, jobs["failed"].exit_code) == ("FAILED", 3)
    assert (jobs["killed"].state, jobs["killed"].signal) == ("FAILED", 9)
    assert (jobs["overmem"].state, jobs["overmem"].signal) == ("FAILED", 9)
    assert jobs["timeout"].state == "TIMEOUT" and jobs["timeout"].time_limit_s == 60
    assert jobs["cancelled"].state == "CANCELLED" and jobs["cancelled"].cancelled_by == 0
    assert jobs["held"].state == "CANCELLED" and jobs["held"].reason == "JobHeldUser"
    assert jobs["held"].nodes == "" and jobs["held"].start_time is None
    assert jobs["nodefail"].state == "NODE_FAIL" and jobs["nodefail"].nodes == "spare-1"
    assert jobs["gpu-h100"].partition == "h100" and jobs["gpu-h100"].exit_code == 0
    assert all(job.final and job.source == "sacct" for job in jobs.values())


def test_sacct_reports_live_jobs_without_exit_codes() -> None:
    jobs = by_name(parse.parse_sacct(recorded("accounting", "sacct_live")))
    assert jobs["timeout"].state == "RUNNING" and jobs["timeout"].exit_code is None
    assert jobs["held"].pending and jobs["held"].reason == "JobHeldUser"


def test_jobcomp_final_states_and_exit_codes() -> None:
    jobs = by_name(parse.parse_sacct(recorded("jobcomp", "sacct_final"), jobcomp=True))
    assert (jobs["failed"].state, jobs["failed"].exit_code) == ("FAILED", 3)
    assert (jobs["killed"].state, jobs["killed"].signal) == ("FAILED", 9)
    assert jobs["timeout"].state == "TIMEOUT" and jobs["timeout"].time_limit_s == 60
    assert jobs["cancelled"].state == "CANCELLED"
    assert jobs["nodefail"].state == "NODE_FAIL"
    assert jobs["held"].nodes == ""
    assert all(job.source == "jobcomp" and job.reason == "" for job in jobs.values())


def test_sinfo_nodes_in_every_state() -> None:
    live = {n.name: n for n in parse.parse_sinfo_nodes(recorded("accounting", "sinfo_live"))}
    assert live["a100-1"].gres == "gpu:a100:8" and live["h100-1"].gres == "gpu:h100:8"
    assert live["cpu-1"].gres == "" and live["cpu-1"].state == "mixed"
    assert live["cpu-1"].partitions == ("cpu",) and live["cpu-1"].cpus == 16
    assert live["a100-1"].memory_mb > 0 and live["a100-1"].responding
    draining = {n.name: n for n in parse.parse_sinfo_nodes(recorded("accounting", "sinfo_draining"))}
    assert draining["spare-1"].state == "draining"
    assert draining["spare-1"].reason == "recording a drained node"
    down = {n.name: n for n in parse.parse_sinfo_nodes(recorded("accounting", "sinfo_down"))}
    assert down["spare-1"].state == "down" and down["spare-1"].reason == "recording a failed node"


def test_sinfo_partitions() -> None:
    parts = {p.name: p for p in parse.parse_sinfo_partitions(recorded("accounting", "sinfo_live"))}
    assert set(parts) == {"a100", "h100", "spare", "cpu"}
    assert parts["cpu"].default and not parts["a100"].default
    assert parts["a100"].available and parts["a100"].time_limit_s is None
    assert parts["h100"].gres == ("gpu:h100:8",) and parts["cpu"].gres == ()
    assert parts["spare"].nodes == ("spare-1",)


def test_sinfo_marks_nodes_that_do_not_answer() -> None:
    nodes = parse.parse_sinfo_nodes("a100-1|a100|up|infinite|idle*|16|1000|gpu:a100:8|none\n"
                                    "a100-2|a100|up|infinite|down*|16|1000|gpu:a100:8|Not responding\n")
    assert [(n.state, n.responding) for n in nodes] == [("idle", False), ("down", False)]


def test_show_config_tells_accounting_apart() -> None:
    with_dbd = parse.parse_key_values(recorded("accounting", "show_config"))
    without = parse.parse_key_values(recorded("jobcomp", "show_config"))
    assert with_dbd["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert without["AccountingStorageType"] == "accounting_storage/none"
    assert without["JobCompType"] == "jobcomp/filetxt"


def test_out_of_memory_and_requeued_attempts() -> None:
    # Slurm 22.05 reports OUT_OF_MEMORY only through cgroup OOM events, which the dev cluster
    # (no cgroups) cannot produce, so these lines are written by hand in sacct's -P format.
    text = ("41|OUT_OF_MEMORY|a100|a100-1|2025-01-02T10:00:00|04:00:00|0:125|None|tsslurm-x-decode-1\n"
            "42|NODE_FAIL|a100|a100-1|2025-01-02T10:00:00|04:00:00|0:0|None|tsslurm-x-decode-2\n"
            "42|RUNNING|a100|a100-2|2025-01-02T10:05:00|04:00:00|0:0|None|tsslurm-x-decode-2\n")
    jobs = parse.parse_sacct(text)
    assert jobs["41"].state == "OUT_OF_MEMORY" and jobs["41"].final
    assert (jobs["41"].exit_code, jobs["41"].signal) == (0, 125)
    assert jobs["42"].state == "RUNNING" and jobs["42"].nodes == "a100-2"


@pytest.mark.parametrize("text", ["1|RUNNING|a100", "no separators at all"])
def test_malformed_lines_raise_parse_errors(text: str) -> None:
    with pytest.raises(SlurmParseError, match="squeue"):
        parse.parse_squeue(text)


def test_a_bar_in_a_job_name_is_kept() -> None:
    line = "7|RUNNING|cpu|cpu-1|2025-01-02T10:00:00|1:00|0:30|None|odd|name"
    assert parse.parse_squeue(line)["7"].name == "odd|name"


@pytest.mark.parametrize("text, expected", [
    ("CANCELLED by 1000", ("CANCELLED", 1000)), ("RUNNING", ("RUNNING", None)),
    ("COMPLETING+", ("COMPLETING", None)), ("cancelled", ("CANCELLED", None)),
])
def test_states(text: str, expected: tuple[str, int | None]) -> None:
    assert parse.parse_state(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("0:0", (0, None)), ("3:0", (3, None)), ("0:9", (0, 9)), ("", (None, None)), ("x", (None, None)),
])
def test_exit_codes(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse.parse_exit_code(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1:00", 60.0), ("365-00:00:00", 365 * 86400.0), ("525600", 525600 * 60.0), ("UNLIMITED", None),
    ("INVALID", None), ("Partition_Limit", None), ("infinite", None), ("00:01:00", 60.0),
])
def test_limits(text: str, expected: float | None) -> None:
    assert parse.parse_limit(text) == expected


def test_job_ids_from_sbatch() -> None:
    assert parse.parse_job_id("123\n") == "123"
    assert parse.parse_job_id("124;tsslurmdev\n") == "124"
    with pytest.raises(SlurmParseError):
        parse.parse_job_id("Submitted batch job 5\n")


def test_ping() -> None:
    assert parse.parse_ping("Slurmctld(primary) at vm is UP\n")
    assert not parse.parse_ping("Slurmctld(primary) at vm is DOWN\n")
