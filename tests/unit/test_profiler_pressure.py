"""CPU pressure (Linux PSI) as the profiler records it: the stalled share of a window, read from
a pressure file; none where the kernel has no PSI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tsslurm.profiler.pressure import PSI_CPU, PressureWindow, cpu_stall_seconds

pytestmark = pytest.mark.timeout(30)


def psi_file(path: Path, total_us: int) -> Path:
    path.write_text(f"some avg10=1.00 avg60=2.00 avg300=3.00 total={total_us}\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    return path


def test_stall_seconds_from_the_some_line(tmp_path: Path) -> None:
    assert cpu_stall_seconds(psi_file(tmp_path / "cpu", 2_500_000)) == 2.5


@pytest.mark.parametrize("text", ["", "some avg10=1.00\n", "some total=lots\n"])
def test_a_kernel_without_psi_says_nothing(tmp_path: Path, text: str) -> None:
    (tmp_path / "cpu").write_text(text)
    assert cpu_stall_seconds(tmp_path / "cpu") is None
    assert cpu_stall_seconds(tmp_path / "missing") is None
    assert PressureWindow(tmp_path / "missing").share() is None


def test_the_share_is_stalled_time_over_wall_time(tmp_path: Path) -> None:
    source = psi_file(tmp_path / "cpu", 1_000_000)
    window = PressureWindow(source)
    began = time.monotonic()
    time.sleep(0.2)
    psi_file(source, 1_100_000)
    share = window.share()
    elapsed = time.monotonic() - began
    assert share is not None and 0.1 / (elapsed + 0.05) <= share <= 0.1 / 0.2


def test_this_machine_reports_a_share_between_0_and_1() -> None:
    if cpu_stall_seconds() is None:
        assert not PSI_CPU.exists() or cpu_stall_seconds() is None
        return
    window = PressureWindow()
    time.sleep(0.05)
    share = window.share()
    assert share is not None and 0.0 <= share <= 1.0
