"""Slurm's time formats (pure): durations as sbatch --time takes them and squeue prints them."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?:(?P<days>\d+)-)?(?P<rest>\d+(?::\d+){0,2})$")


def parse_slurm_duration(text: str) -> float:
    """Seconds in a Slurm duration: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.

    Raises ValueError for anything else (including UNLIMITED, which callers handle themselves).
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a Slurm duration: {text!r} (expected e.g. 04:00:00 or 1-00:00:00)")
    days = int(match["days"] or 0)
    parts = [int(p) for p in match["rest"].split(":")]
    if match["days"] is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def format_slurm_duration(seconds: float) -> str:
    """The D-HH:MM:SS form sbatch accepts (rounded up to whole seconds)."""
    total = int(-(-seconds // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock
