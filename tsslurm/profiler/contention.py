"""How much other work held the measured engine back: the share of a window during which the
engine's busiest thread (its compute thread) was runnable but waiting for a CPU, from the run
delay Linux keeps per thread (/proc/<pid>/task/<tid>/schedstat). A figure measured while this is
high came out slower than the hardware allows; the profiler records it next to its figures, and a
check that compares two measurements can tell whether they ran under like conditions.
None where the kernel keeps no schedstat or the processes are gone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

PROC = Path("/proc")

ThreadTimes = dict[tuple[int, int], tuple[int, int]]
"""(pid, tid) -> (nanoseconds on a CPU, nanoseconds runnable but waiting), since it started."""


def thread_times(pids: Sequence[int], proc: Path = PROC) -> ThreadTimes:
    times: ThreadTimes = {}
    for pid in pids:
        try:
            tids = [int(entry.name) for entry in (proc / str(pid) / "task").iterdir()]
        except (OSError, ValueError):
            continue
        for tid in tids:
            try:
                fields = (proc / str(pid) / "task" / str(tid) / "schedstat").read_text().split()
                times[(pid, tid)] = (int(fields[0]), int(fields[1]))
            except (OSError, IndexError, ValueError):
                continue
    return times


def busiest_wait_share(before: ThreadTimes, after: ThreadTimes, seconds: float) -> float | None:
    """The run delay of the thread that ran most between the two readings, over `seconds`."""
    grown = [(after[key][0] - before[key][0], after[key][1] - before[key][1])
             for key in after.keys() & before.keys()]
    if not grown or seconds <= 0 or max(ran for ran, _ in grown) <= 0:
        return None
    _, waited = max(grown)
    return max(0.0, min(1.0, waited / 1e9 / seconds))


class ContentionWindow:
    """Started on creation; `share()` is the busiest thread's waiting share since then."""

    def __init__(self, pids: Sequence[int], proc: Path = PROC) -> None:
        self.pids, self.proc = list(pids), proc
        self.before = thread_times(self.pids, proc)
        self.began = time.monotonic()

    def share(self) -> float | None:
        after = thread_times(self.pids, self.proc)
        return busiest_wait_share(self.before, after, time.monotonic() - self.began)
