"""The broker's SQLite store in the state directory: the deployment, the Slurm jobs the broker owns,
and completed-request records. Writes go through one writer thread in batches (off the broker's
loop); reads open their own connection.

Re-adoption after a crash (issue 7) reads `open_jobs()`: every job not yet ended, with its role,
partition, state and times, keyed by the Slurm job id, so a restarted broker can ask Slurm about
exactly those jobs and take the running ones back."""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.broker.requests import RequestRecord

SCHEMA_VERSION = 1
JOB_STATES = ("pending", "starting", "ready", "draining", "ended")
OPEN_JOB_STATES = JOB_STATES[:-1]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployment (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    partition TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_at REAL,
    started_at REAL,
    ready_at REAL,
    ended_at REAL,
    worker_id TEXT,
    node TEXT,
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    arrival REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    max_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    first_token_at REAL,
    finished_at REAL NOT NULL,
    path TEXT NOT NULL,
    workers TEXT NOT NULL,
    retries INTEGER NOT NULL,
    handovers INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    finish_reason TEXT,
    error TEXT,
    stream_messages INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_finish ON requests (finished_at);
CREATE INDEX IF NOT EXISTS requests_by_id ON requests (request_id);
"""

_REQUEST_FIELDS = RequestRecord.__struct_fields__
_INSERT_REQUEST = (f"INSERT INTO requests ({', '.join(_REQUEST_FIELDS)}) "
                   f"VALUES ({', '.join('?' for _ in _REQUEST_FIELDS)})")


class JobRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    job_id: str
    role: str
    """Policy role: "prefill", "decode" or "convertible"."""
    partition: str
    state: str
    submitted_at: float | None = None
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    worker_id: str | None = None
    node: str | None = None
    reason: str = ""


_JOB_FIELDS = JobRecord.__struct_fields__
_UPSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(_JOB_FIELDS)}, updated_at) "
    f"VALUES ({', '.join('?' for _ in _JOB_FIELDS)}, ?) ON CONFLICT(job_id) DO UPDATE SET "
    + ", ".join(f"{f} = COALESCE(excluded.{f}, {f})" for f in _JOB_FIELDS[1:])
    + ", updated_at = excluded.updated_at")


class Store:
    """Open (and create) the database; `start()` the writer before queueing writes."""

    def __init__(self, path: Path):
        self.path = path
        self._pending: list[RequestRecord] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        path.touch(mode=0o600)  # SQLite gives its -wal and -shm files the database's mode
        with _reading(path) as db:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="tsslurm-store", daemon=True)
        self._thread.start()

    def put_request(self, record: RequestRecord) -> None:
        """Keep a record for the next `hand_over` (the hot path: a list append)."""
        self._pending.append(record)

    def hand_over(self) -> None:
        """Give the records kept since the last call to the writer thread, as one batch (the
        broker calls this on a timer, from its loop)."""
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(batch)

    def put_job(self, job: JobRecord) -> None:
        self._queue.put(job)

    def set_deployment(self, values: dict[str, str]) -> None:
        self._queue.put(dict(values))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written."""
        self.hand_over()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self) -> None:
        if self._thread is not None:
            self.hand_over()
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def requests(self) -> list[RequestRecord]:
        return read_requests(self.path)

    def open_jobs(self) -> list[JobRecord]:
        return read_jobs(self.path, OPEN_JOB_STATES)

    def deployment(self) -> dict[str, str]:
        with _reading(self.path) as db:
            return dict(db.execute("SELECT key, value FROM deployment").fetchall())

    def _write_loop(self) -> None:
        db = _connect(self.path)
        try:
            while _write_batch(db, self._take_batch()):
                pass
        finally:
            db.close()

    def _take_batch(self) -> list[Any]:
        """Wait for something to write, then take whatever else is already queued."""
        items = [self._queue.get()]
        while items[-1] is not None:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items


def read_requests(path: Path) -> list[RequestRecord]:
    """Completed-request records of a store (also another process's broker's)."""
    with _reading(path) as db:
        rows = db.execute(f"SELECT {', '.join(_REQUEST_FIELDS)} FROM requests "
                          "ORDER BY finished_at").fetchall()
    return [RequestRecord(**dict(zip(_REQUEST_FIELDS, row))) for row in rows]


def read_jobs(path: Path, states: tuple[str, ...] = JOB_STATES) -> list[JobRecord]:
    with _reading(path) as db:
        rows = db.execute(
            f"SELECT {', '.join(_JOB_FIELDS)} FROM jobs WHERE state IN "
            f"({', '.join('?' for _ in states)}) ORDER BY job_id", states).fetchall()
    return [JobRecord(**dict(zip(_JOB_FIELDS, row))) for row in rows]


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    db = _connect(path)
    try:
        yield db
    finally:
        db.close()


def _write_batch(db: sqlite3.Connection, items: list[Any]) -> bool:
    """Write one batch; False once the close sentinel (None) is seen."""
    records = [record for item in items if isinstance(item, list) for record in item]
    now = time.time()
    with db:
        if records:
            db.executemany(_INSERT_REQUEST, [tuple(getattr(r, f) for f in _REQUEST_FIELDS)
                                             for r in records])
        for item in items:
            if isinstance(item, JobRecord):
                db.execute(_UPSERT_JOB, (*(getattr(item, f) for f in _JOB_FIELDS), now))
            elif isinstance(item, dict):
                db.executemany("INSERT OR REPLACE INTO deployment (key, value) VALUES (?, ?)",
                               list(item.items()))
    for item in items:
        if isinstance(item, threading.Event):
            item.set()
    return items[-1] is not None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db
