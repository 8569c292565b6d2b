"""How contended the CPUs were while something was measured, from Linux's pressure stall
information (/proc/pressure/cpu): the share of wall time during which some runnable task waited
for a CPU. A figure measured on a node where it is high came out slower than the hardware allows;
the profiler records it next to its figures, and a check that compares two measurements can tell
whether they ran under the same conditions. None where the kernel has no PSI."""

from __future__ import annotations

import time
from pathlib import Path

PSI_CPU = Path("/proc/pressure/cpu")


def cpu_stall_seconds(source: Path = PSI_CPU) -> float | None:
    """Seconds, since boot, during which some runnable task waited for a CPU; None without PSI."""
    try:
        first = source.read_text().splitlines()[0]
        return int(first.split("total=")[1].split()[0]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


class PressureWindow:
    """Started on creation; `share()` is the stalled share of the wall time since then."""

    def __init__(self, source: Path = PSI_CPU) -> None:
        self.source = source
        self.stalled = cpu_stall_seconds(source)
        self.began = time.monotonic()

    def share(self) -> float | None:
        now = cpu_stall_seconds(self.source)
        elapsed = time.monotonic() - self.began
        if now is None or self.stalled is None or elapsed <= 0:
            return None
        return max(0.0, min(1.0, (now - self.stalled) / elapsed))
