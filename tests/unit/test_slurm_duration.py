"""Slurm durations: every form sbatch takes and squeue prints, and the form sbatch is given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsslurm.slurm.duration import format_slurm_duration, parse_slurm_duration


@pytest.mark.parametrize("text, seconds", [
    ("5", 300), ("1:30", 90), ("01:02:03", 3723), ("2-00", 172800), ("1-02:03", 93780),
    ("1-02:03:04", 93784), (" 0:00 ", 0), ("365-00:00:00", 365 * 86400),
])
def test_parses_every_form(text: str, seconds: float) -> None:
    assert parse_slurm_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "UNLIMITED", "1:2:3:4", "-5", "1h", "1-", "a:00"])
def test_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm duration"):
        parse_slurm_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (0, "00:00:00"), (59.2, "00:01:00"), (3600, "01:00:00"), (86400, "1-00:00:00"),
    (90061, "1-01:01:01"),
])
def test_formats_for_sbatch(seconds: float, text: str) -> None:
    assert format_slurm_duration(seconds) == text


@given(st.integers(min_value=0, max_value=400 * 86400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_slurm_duration(format_slurm_duration(seconds)) == seconds
