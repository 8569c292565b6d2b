"""The autoscaler's pure parts: the job table (fleet.py) folding Slurm polls and worker events into
the SnapshotBuilder the policy reads, the meaning of Slurm's pending reasons, and the event log's
replayable steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsslurm.broker.eventlog import EventLog, read_events, read_segments
from tsslurm.broker.events import WorkerChange
from tsslurm.broker.fleet import LOST_GRACE_S, UNAVAILABLE_S, Fleet
from tsslurm.broker.pending import node_usable, will_not_start
from tsslurm.policy.builder import SnapshotBuilder
from tsslurm.policy.runner import PolicyRunner
from tsslurm.profile import load_profile
from tsslurm.slurm.parse import JobStatus, NodeInfo

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fleet() -> Fleet:
    profile = load_profile("local-mock")
    return Fleet(SnapshotBuilder.from_profile(profile), list(profile.partitions))


def _status(job_id: str, state: str, reason: str = "", nodes: str = "", **extra) -> JobStatus:
    return JobStatus(job_id=job_id, state=state, reason=reason, nodes=nodes, partition="a100",
                     **extra)


def _pools(fleet: Fleet, now: float, role: str) -> tuple[int, int, int, int]:
    counts = fleet.builder.snapshot(now).pools[role]["a100"]
    return counts.ready, counts.starting, counts.pending, counts.draining


def _submit(fleet: Fleet, now: float, role: str = "decode", job_id: str = "11") -> str:
    token = fleet.submitting(now, role, "a100")
    fleet.submitted(now + 0.5, token, job_id)
    return job_id


def test_a_job_goes_pending_starting_ready_and_the_builder_follows(fleet: Fleet) -> None:
    token = fleet.submitting(0.0, "decode", "a100")
    assert _pools(fleet, 0.1, "decode") == (0, 0, 1, 0), "a submission counts before its id"
    fleet.submitted(0.5, token, "11")
    assert _pools(fleet, 0.6, "decode") == (0, 0, 1, 0), "never counted twice"
    fleet.apply_poll(3.0, {"11": _status("11", "RUNNING", nodes="a100-1", time_left_s=600)},
                     (), None)
    assert _pools(fleet, 3.1, "decode") == (0, 1, 0, 0)
    job = fleet.jobs["11"]
    assert (job.node, job.ends_at) == ("a100-1", 603.0)
    fleet.worker_event(4.0, WorkerChange(4.0, "decoder-11", "decode", "a100", "ready", "11"))
    assert _pools(fleet, 4.1, "decode") == (1, 0, 0, 0)
    changes, _, _ = fleet.take()
    assert [(c.old, c.new) for c in changes] == [("", "pending"), ("pending", "starting"),
                                                  ("starting", "ready")]
    assert changes[1].wait_s == pytest.approx(3.0), "the queue wait is from the submission"


def test_a_reason_that_will_not_start_cancels_and_avoids_the_partition(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    fleet.apply_poll(2.0, {"11": _status("11", "PENDING", "QOSMaxGRESPerUser")}, (), None)
    _, commands, notices = fleet.take()
    assert [(c.kind, c.job_id) for c in commands] == [("cancel", "11")]
    assert "11" not in fleet.jobs and "11" in fleet.closing
    view = fleet.builder.snapshot(2.1).partitions[0]
    assert not view.available and "QOSMaxGRESPerUser" in fleet.unavailability("a100")
    assert [n.kind for n in notices] == ["partition"]
    fleet.check(2.0 + UNAVAILABLE_S + 1, {})
    assert fleet.builder.snapshot(400.0).partitions[0].available, "tried again after a while"


def test_waits_are_kept_and_a_long_one_is_noticed_once(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    for now in (2.0, 40.0, 80.0):
        fleet.apply_poll(now, {"11": _status("11", "PENDING", "Resources")}, (), None)
        fleet.check(now, {"a100": 1.0})
    _, commands, notices = fleet.take()
    assert not commands and "11" in fleet.jobs
    assert [n.kind for n in notices] == ["pending-long"] and "Resources" in notices[0].text


def test_a_job_ended_under_its_worker_drops_the_worker_and_is_forgotten(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    fleet.worker_event(1.0, WorkerChange(1.0, "decoder-11", "decode", "a100", "ready", "11"))
    fleet.take()
    fleet.apply_poll(5.0, {"11": _status("11", "NODE_FAIL", exit_code=0)}, (), None)
    changes, commands, _ = fleet.take()
    assert [(c.kind, c.job_id) for c in commands] == [("drop", "11"), ("forget", "11")]
    assert changes[-1].new == "ended" and changes[-1].reason == "NODE_FAIL"
    assert _pools(fleet, 5.1, "decode") == (0, 0, 0, 0)


def test_a_job_let_go_gets_its_final_state_once_the_backend_confirms_it(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    fleet.apply_poll(1.0, {"11": _status("11", "RUNNING", nodes="a100-1")}, (), None)
    fleet.cancel(2.0, "11", "decode on a100: 2 -> 1")
    fleet.take()
    fleet.apply_poll(2.5, {"11": _status("11", "RUNNING", nodes="a100-1")}, (), None)
    assert fleet.take()[0] == [], "still running: nothing to confirm yet"
    cancelled = _status("11", "CANCELLED", nodes="a100-1", cancelled_by=0)
    fleet.apply_poll(3.0, {"11": cancelled}, (), None)
    changes, commands, _ = fleet.take()
    assert [(c.job_id, c.old, c.new) for c in changes] == [("11", "ended", "final")]
    assert changes[0].reason == "decode on a100: 2 -> 1; Slurm: CANCELLED by uid 0"
    assert [(c.kind, c.job_id) for c in commands] == [("forget", "11")]
    fleet.apply_poll(4.0, {"11": cancelled}, (), None)
    assert fleet.take() == ([], [], []), "confirmed once"
    assert _pools(fleet, 4.1, "decode") == (0, 0, 0, 0)


def test_a_worker_that_left_ends_its_job_unless_it_registered_again(fleet: Fleet) -> None:
    _submit(fleet, 0.0, job_id="11")
    _submit(fleet, 0.0, job_id="12")
    for job in ("11", "12"):
        fleet.worker_event(1.0, WorkerChange(1.0, f"decoder-{job}", "decode", "a100", "ready", job))
    fleet.worker_event(2.0, WorkerChange(2.0, "decoder-11", "decode", "a100", "left", "11",
                                         "it registered again"))
    fleet.worker_event(2.0, WorkerChange(2.0, "decoder-11", "decode", "a100", "ready", "11"))
    fleet.worker_event(2.0, WorkerChange(2.0, "decoder-12", "decode", "a100", "left", "12",
                                         "SIGTERM"))
    fleet.take()
    fleet.check(2.5, {})
    _, commands, _ = fleet.take()
    assert [(c.kind, c.job_id) for c in commands] == [("cancel", "12")]
    assert set(fleet.jobs) == {"11"}


def test_a_silent_worker_gets_a_grace_before_its_job_is_cancelled(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    fleet.worker_event(1.0, WorkerChange(1.0, "decoder-11", "decode", "a100", "ready", "11"))
    fleet.worker_event(2.0, WorkerChange(2.0, "decoder-11", "decode", "a100", "lost", "11"))
    fleet.check(2.0 + LOST_GRACE_S / 2, {})
    assert "11" in fleet.jobs
    fleet.check(3.0 + LOST_GRACE_S, {})
    assert "11" not in fleet.jobs and ("cancel", "11") in [(c.kind, c.job_id)
                                                          for c in fleet.take()[1]]


def test_a_drained_node_drains_its_jobs_and_blocks_its_partition(fleet: Fleet) -> None:
    _submit(fleet, 0.0)
    fleet.apply_poll(1.0, {"11": _status("11", "RUNNING", nodes="a100-1")}, (), None)
    fleet.worker_event(1.5, WorkerChange(1.5, "decoder-11", "decode", "a100", "ready", "11"))
    drained = NodeInfo(name="a100-1", state="drained", partitions=("a100",), reason="maint")
    fleet.apply_poll(3.0, {"11": _status("11", "RUNNING", nodes="a100-1")}, (), [drained])
    _, commands, _ = fleet.take()
    assert ("drain", "11") in [(c.kind, c.job_id) for c in commands]
    assert fleet.jobs["11"].state == "draining"
    assert "drained" in (fleet.unavailability("a100") or "")


def test_a_node_fail_blocks_the_partition_until_sinfo_says_the_node_is_back(fleet: Fleet) -> None:
    idle = NodeInfo(name="a100-1", state="idle", partitions=("a100",))
    _submit(fleet, 0.0)
    fleet.apply_poll(1.0, {"11": _status("11", "RUNNING", nodes="a100-1")}, (), [idle])
    fleet.worker_event(1.5, WorkerChange(1.5, "decoder-11", "decode", "a100", "ready", "11"))
    fleet.take()
    fleet.apply_poll(3.0, {"11": _status("11", "NODE_FAIL", nodes="a100-1")}, (), None)
    _, commands, notices = fleet.take()
    assert ("drop", "11") in [(c.kind, c.job_id) for c in commands]
    assert "a100-1 down" in (fleet.unavailability("a100") or ""), "before the next sinfo"
    assert not fleet.builder.snapshot(3.1).partitions[0].available
    assert [(n.kind, n.subject) for n in notices] == [("partition", "a100")]
    fleet.apply_poll(4.0, {}, (), [idle])
    assert fleet.unavailability("a100") is None and fleet.builder.snapshot(4.1).partitions[0].available


def test_submissions_cancelled_before_their_id_are_cancelled_once_known(fleet: Fleet) -> None:
    token = fleet.submitting(0.0, "prefill", "a100")
    fleet.cancel(0.2, token, "scaled down")
    fleet.submitted(0.5, token, "21")
    _, commands, _ = fleet.take()
    assert [(c.kind, c.job_id) for c in commands] == [("cancel", "21")]
    assert not fleet.jobs


def test_adoption_keeps_live_jobs_and_closes_ended_ones(fleet: Fleet) -> None:
    assert fleet.adopt(100.0, "31", "decode", "a100", _status("31", "RUNNING", time_left_s=50),
                       submitted_at=10.0, started_at=12.0)
    assert fleet.adopt(100.0, "32", "prefill", "a100", _status("32", "PENDING", "Priority"))
    assert not fleet.adopt(100.0, "33", "prefill", "a100", _status("33", "COMPLETED"))
    assert not fleet.adopt(100.0, "34", "prefill", "a100", None)
    assert {j: fleet.jobs[j].state for j in fleet.jobs} == {"31": "starting", "32": "pending"}
    assert fleet.jobs["31"].ends_at == 150.0


@pytest.mark.parametrize(("reason", "down", "expected"), [
    ("Priority", False, False), ("Resources", False, False), ("JobHeldUser", False, False),
    ("QOSMaxGRESPerUser", False, True), ("ReqNodeNotAvail, UnavailableNodes:a100-1", False, True),
    ("InvalidAccount", False, True), ("PartitionConfig", False, True),
    ("Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved", False, False),
    ("Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved", True, True),
    ("SomethingNew", False, False), ("", False, False),
])
def test_pending_reasons(reason: str, down: bool, expected: bool) -> None:
    assert will_not_start(reason, down) is expected


def test_node_states() -> None:
    assert node_usable(NodeInfo(name="n", state="mixed"))
    assert not node_usable(NodeInfo(name="n", state="idle", responding=False))
    assert not node_usable(NodeInfo(name="n", state="drained"))


def test_the_event_log_replays_to_the_same_decisions(tmp_path: Path, fleet: Fleet) -> None:
    log = EventLog(tmp_path)
    runner = PolicyRunner("tokenscale")
    log.runner(0.0, "tokenscale", {})
    for second in range(1, 30):
        now = float(second)
        for i in range(second % 7):
            fleet.builder.arrival(now, f"r{second}-{i}", 200 * (i + 1))
        step = runner.step(fleet.builder.snapshot(now))
        log.step(fleet.builder.snapshot(now), step)
        log.event(now, "decision", targets=step.decision.targets)
    log.close()
    (tmp_path / "steps.jsonl").open("ab").write(b'{"time": 31, "snapsh')  # a crash mid-line
    [segment] = read_segments(tmp_path / "steps.jsonl")
    replay = PolicyRunner(segment.policy, segment.params)
    assert len(segment.steps) == 29
    for record in segment.steps:
        assert replay.step(record.snapshot).decision.targets == record.targets
    assert len(read_events(tmp_path / "events.jsonl")) == 29
