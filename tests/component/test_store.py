"""The broker's SQLite store: request records written in batches by the writer thread, the jobs
table a restarted broker reads to re-adopt its Slurm jobs, private files."""

from __future__ import annotations

import stat
import threading

import pytest

from tsslurm.broker.requests import RequestRecord
from tsslurm.broker.store import JobRecord, Store, read_jobs, read_requests

pytestmark = pytest.mark.timeout(60)


def record(i: int, **fields: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": f"r{i}", "arrival": 100.0 + i, "input_tokens": 10 + i, "max_tokens": 5,
        "output_tokens": 5, "first_token_at": 100.5 + i, "finished_at": 101.0 + i,
        "path": "disaggregated", "workers": "p1,d1", "retries": 0, "handovers": 0,
        "outcome": "ok", "finish_reason": "length", "stream_messages": 5}
    base.update(fields)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_records_are_written_in_batches_and_read_back(state_dir) -> None:
    store = Store(state_dir / "broker.sqlite")
    store.start()
    writer = store._thread
    records = [record(i) for i in range(2500)]
    records.append(record(9999, outcome="timeout", first_token_at=None, output_tokens=0,
                          error="no complete answer within 1.0 s"))
    for each in records:
        store.put_request(each)
    assert read_requests(store.path) == [], "nothing is written before the hand-over"
    assert store.flush()
    assert read_requests(store.path) == sorted(records, key=lambda r: r.finished_at)
    store.close()
    assert writer is not None and not writer.is_alive()
    back = {r.request_id: r for r in read_requests(store.path)}
    assert back["r3"].ttft_s == pytest.approx(0.5) and back["r3"].tpot_s == pytest.approx(0.125)
    assert back["r9999"].ttft_s is None and back["r9999"].error.startswith("no complete")
    for suffix in ("", "-wal", "-shm"):
        path = state_dir / f"broker.sqlite{suffix}"
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_jobs_table_keeps_what_re_adoption_needs(state_dir) -> None:
    store = Store(state_dir / "broker.sqlite")
    store.start()
    store.put_job(JobRecord(job_id="101", role="decode", partition="a100", state="pending",
                            submitted_at=10.0))
    store.put_job(JobRecord(job_id="102", role="prefill", partition="h100", state="pending",
                            submitted_at=11.0))
    store.put_job(JobRecord(job_id="101", role="decode", partition="a100", state="ready",
                            started_at=12.0, ready_at=13.0, worker_id="decoder-101", node="n1"))
    store.put_job(JobRecord(job_id="102", role="prefill", partition="h100", state="ended",
                            ended_at=20.0, reason="cancelled by the policy"))
    store.set_deployment({"deployment": "t", "broker_pid": "42"})
    store.close()
    reopened = Store(state_dir / "broker.sqlite")
    (job,) = reopened.open_jobs()
    assert job == JobRecord(job_id="101", role="decode", partition="a100", state="ready",
                            submitted_at=10.0, started_at=12.0, ready_at=13.0,
                            worker_id="decoder-101", node="n1")
    ended = next(j for j in read_jobs(reopened.path) if j.job_id == "102")
    assert (ended.state, ended.submitted_at, ended.reason) == ("ended", 11.0,
                                                              "cancelled by the policy")
    assert reopened.deployment() == {"deployment": "t", "broker_pid": "42"}


def test_writes_from_the_loop_and_a_reader_at_the_same_time(state_dir) -> None:
    store = Store(state_dir / "broker.sqlite")
    store.start()
    seen: list[int] = []

    def read_while_writing() -> None:
        for _ in range(30):
            seen.append(len(read_requests(store.path)))

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    for batch in range(10):
        for i in range(200):
            store.put_request(record(batch * 200 + i))
        store.hand_over()
    reader.join()
    store.close()
    assert len(read_requests(store.path)) == 2000
    assert seen == sorted(seen), "readers see whole batches, in order"
