"""Reading trace files: Azure LLM inference CSV, BurstGPT CSV and Mooncake JSONL, told apart by
their header (or first record). The only module of the simulator that reads trace files.

- Azure (Splitwise 2023): `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps
  `YYYY-MM-DD HH:MM:SS.fffffff` without a time zone.
- BurstGPT: `Timestamp` in seconds, `Request tokens`, `Response tokens` (other columns ignored).
  Rows with 0 response tokens are failed requests in BurstGPT's log and are skipped.
- Mooncake: one JSON object per line with `timestamp` in milliseconds from the start,
  `input_length`, `output_length`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tsslurm.sim.trace import Trace, TraceError, make_trace, mix

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def load_trace(spec: str) -> Trace:
    """A trace file, or several separated by commas (the Mixed trace of them)."""
    paths = [part.strip() for part in spec.split(",") if part.strip()]
    if not paths:
        raise TraceError("no trace file given")
    traces = [read_trace(Path(p)) for p in paths]
    return traces[0] if len(traces) == 1 else mix(traces)


def read_trace(path: Path) -> Trace:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TraceError(f"trace {path} is not a text file (expected CSV or JSONL)") from None
    reader = detect_format(text, str(path))
    return reader(text, path.stem)


def detect_format(text: str, source: str) -> Callable[[str, str], Trace]:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        raise TraceError(f"trace {source} is empty")
    if first.startswith("{"):
        return parse_mooncake
    header = [column.strip() for column in next(csv.reader([first]))]
    if all(column in header for column in AZURE_COLUMNS):
        return parse_azure
    if all(column in header for column in BURSTGPT_COLUMNS):
        return parse_burstgpt
    raise TraceError(
        f"unknown trace format in {source}: first line {first[:80]!r}; expected an Azure CSV "
        f"({','.join(AZURE_COLUMNS)}), a BurstGPT CSV ({', '.join(BURSTGPT_COLUMNS)}) or "
        f"Mooncake JSONL ({', '.join(MOONCAKE_KEYS)})")


def parse_azure(text: str, name: str) -> Trace:
    rows = _csv_rows(text, AZURE_COLUMNS, name)
    try:
        stamps = np.array([r[0].strip().replace(" ", "T") for r in rows], dtype="datetime64[ns]")
    except ValueError as error:
        raise TraceError(f"trace {name}: bad TIMESTAMP ({error})") from None
    seconds = (stamps - stamps.min()).astype(np.int64) / 1e9
    return make_trace(name, seconds, _ints(rows, 1, name), _ints(rows, 2, name))


def parse_burstgpt(text: str, name: str) -> Trace:
    rows = _csv_rows(text, BURSTGPT_COLUMNS, name)
    outputs = _ints(rows, 2, name)
    keep = outputs > 0
    if not keep.any():
        raise TraceError(f"trace {name}: every request failed (0 response tokens)")
    return make_trace(name, _floats(rows, 0, name)[keep], _ints(rows, 1, name)[keep], outputs[keep])


def parse_mooncake(text: str, name: str) -> Trace:
    stamps, inputs, outputs = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            stamps.append(float(record["timestamp"]) / 1000.0)
            inputs.append(int(record["input_length"]))
            outputs.append(int(record["output_length"]))
        except (ValueError, KeyError, TypeError) as error:
            raise TraceError(f"trace {name} line {number}: not a Mooncake record with "
                             f"{', '.join(MOONCAKE_KEYS)} ({error!r})") from None
    return make_trace(name, np.array(stamps), np.array(inputs), np.array(outputs))


def _csv_rows(text: str, columns: tuple[str, ...], name: str) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text))
    header = [column.strip() for column in next(reader)]
    index = [header.index(column) for column in columns]
    rows = []
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise TraceError(f"trace {name} line {number}: {len(row)} fields, header has "
                             f"{len(header)}")
        rows.append([row[i] for i in index])
    if not rows:
        raise TraceError(f"trace {name} has a header but no requests")
    return rows


def _ints(rows: list[list[str]], column: int, name: str) -> np.ndarray:
    try:
        return np.array([int(float(r[column])) for r in rows], dtype=np.int64)
    except ValueError as error:
        raise TraceError(f"trace {name}: a token count is not a number ({error})") from None


def _floats(rows: list[list[str]], column: int, name: str) -> np.ndarray:
    try:
        return np.array([float(r[column]) for r in rows], dtype=np.float64)
    except ValueError as error:
        raise TraceError(f"trace {name}: a timestamp is not a number ({error})") from None
