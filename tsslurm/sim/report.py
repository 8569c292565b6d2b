"""Reports of `tsslurm simulate`: the JSON file other tools read (stable field names, byte-identical
for the same inputs and seed), and the terminal table with each policy's cost relative to both
oracle bounds. The plot is plot.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tsslurm.errors import UserError

COLUMNS = (
    ("policy", None), ("SLO", "slo_attainment"), ("TTFT ok", "ttft_attainment"),
    ("TPOT ok", "tpot_attainment"), ("GPU-h", "gpu_hours"), ("x oracle", "cost_vs_oracle"),
    ("x oracle_startup", "cost_vs_oracle_startup"), ("TTFT p50/p99 ms", None),
    ("TPOT p50/p99 ms", None), ("jobs sub/canc", None),
)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(report: dict[str, Any], path: str | Path) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(to_json(report))
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}") from None


def _clean(value: Any) -> Any:
    """NaN and infinities become null; tuples become lists; everything else as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, f in report["policies"].items():
        rows.append([
            name, _pct(f["slo_attainment"]), _pct(f["ttft_attainment"]),
            _pct(f["tpot_attainment"]), f"{f['gpu_hours']:.2f}", _ratio(f["cost_vs_oracle"]),
            _ratio(f["cost_vs_oracle_startup"]),
            f"{_ms(f['ttft_p50_ms'])}/{_ms(f['ttft_p99_ms'])}",
            f"{_ms(f['tpot_p50_ms'])}/{_ms(f['tpot_p99_ms'])}",
            f"{f['jobs_submitted']:g}/{f['jobs_cancelled']:g}",
        ])
    for bound in ("oracle", "oracle_startup"):
        hours = report[bound]["gpu_hours"]
        rows.append([bound, "100%", "100%", "100%", f"{hours:.2f}", "", "", "", "", ""])
    return rows


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{report['trace']} on {report['profile']}: {report['requests']:,} requests, "
             f"seeds {report['seeds']}")
    table = Table(title=title)
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "policy" else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
