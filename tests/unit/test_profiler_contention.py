"""How much other work held an engine back: the busiest thread's run delay from schedstat files
(recorded layouts in a temporary /proc), and for real: a busy process pinned alone to a core
waits little, the same process sharing its core with another busy one waits about half the time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tsslurm.profiler.contention import ContentionWindow, busiest_wait_share, thread_times

pytestmark = pytest.mark.timeout(60)

SPIN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def fake_proc(root: Path, pid: int, threads: dict[int, tuple[int, int]]) -> Path:
    for tid, (ran, waited) in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "schedstat").write_text(f"{ran} {waited} 10\n")
    return root


def test_the_busiest_thread_decides(tmp_path: Path) -> None:
    before = thread_times([7], fake_proc(tmp_path, 7, {7: (0, 0), 8: (0, 0)}))
    after = thread_times([7], fake_proc(tmp_path, 7, {7: (100_000_000, 900_000_000),
                                                      8: (800_000_000, 500_000_000)}))
    assert busiest_wait_share(before, after, 2.0) == 0.25


def test_nothing_known_gives_none(tmp_path: Path) -> None:
    assert thread_times([12345], tmp_path) == {}
    assert busiest_wait_share({}, {}, 1.0) is None
    assert ContentionWindow([12345], tmp_path).share() is None
    fake_proc(tmp_path, 9, {9: (5, 5)})
    (tmp_path / "9" / "task" / "9" / "schedstat").write_text("garbage\n")
    assert thread_times([9], tmp_path) == {}


def spin_on(core: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", SPIN])
    os.sched_setaffinity(process.pid, {core})
    return process


def wait_share(pid: int, seconds: float) -> float:
    window = ContentionWindow([pid])
    time.sleep(seconds)
    share = window.share()
    assert share is not None
    return share


def test_a_process_sharing_its_core_waits_for_it() -> None:
    core = max(os.sched_getaffinity(0))
    measured = spin_on(core)
    rival = spin_on(core)
    try:
        time.sleep(0.2)
        shared = wait_share(measured.pid, 1.5)
    finally:
        rival.kill()
        rival.wait()
    try:
        alone = wait_share(measured.pid, 1.5)
    finally:
        measured.kill()
        measured.wait()
    assert shared > 0.3, "two busy processes on one core: each waits about half the time"
    assert shared > alone, (shared, alone)
