"""From the job's raw measurements to what a profile holds: V_P, the prefill overhead, the decode
step model, the V_D grid (measured, next to the step model's prediction for the same batch and
the roofline's own choice of batch), V_N, KV bytes and capacity, and the `measured` provenance.
Pure: no I/O, no clock."""

from __future__ import annotations

import math

import msgspec

from tsslurm import __version__
from tsslurm.perfmodel import decode_step_seconds, roofline_decode_velocity
from tsslurm.profile.schema import DecodeStep, Profile, Velocities
from tsslurm.profiler.fit import (
    StepFit,
    fit_decode_step,
    kv_transfer_velocity,
    prefill_overhead_ms,
    prefill_velocity,
)
from tsslurm.profiler.results import DecodeCell, LockstepSample, Measurements


class CellReport(msgspec.Struct, frozen=True):
    row: int
    column: int
    input_tokens: int
    output_tokens: int
    batch: int
    limited_by: str
    step_ms: float
    measured: float
    """V_D measured: the batch's tokens (input + output) over its O decode steps."""
    model_same_batch: float
    """The step model's V_D for the same batch and lengths."""
    roofline: float
    """perfmodel.roofline_decode_velocity: the step model choosing its own batch."""


class Analysis(msgspec.Struct, frozen=True):
    velocities: Velocities
    model_load_s: float
    step_fit: StepFit
    cells: list[CellReport]
    kv_latency_s: float


def analyse(measurements: Measurements, profile: Profile, headroom: float) -> Analysis:
    step_fit = fit_decode_step(measurements.decode_samples)
    v_n, latency = kv_transfer_velocity(measurements.pulls)
    tpot_s = profile.slo.tpot_ms / 1000
    capacity = measurements.engine.kv_capacity_tokens
    cells = [_cell_report(c, step_fit.step, capacity, tpot_s, headroom) for c in measurements.cells]
    grid = _grid(cells)
    velocities = Velocities(
        prefill_tokens_per_s=round(prefill_velocity(measurements.prefill_levels)),
        kv_transfer_tokens_per_s=round(v_n),
        kv_transfer_latency_ms=round(latency * 1000, 2),
        kv_bytes_per_token=measurements.kv_bytes_per_token,
        kv_capacity_tokens=capacity,
        decode_step=step_fit.step,
        decode_tokens_per_s=grid,
        prefill_overhead_ms=round(prefill_overhead_ms(measurements.prefill_singles), 2),
        measured={})
    analysis = Analysis(velocities, round(measurements.model_load_s, 1), step_fit, cells, latency)
    provenance = provenance_of(measurements, analysis, headroom)
    return msgspec.structs.replace(
        analysis, velocities=msgspec.structs.replace(velocities, measured=provenance))


def _cell_report(cell: DecodeCell, step: DecodeStep, capacity: int, tpot_s: float,
                 headroom: float) -> CellReport:
    sample = cell.sample
    return CellReport(
        row=cell.row, column=cell.column, input_tokens=sample.input_tokens,
        output_tokens=sample.output_tokens, batch=sample.batch, limited_by=cell.limited_by,
        step_ms=round(sample.step_s * 1000, 2), measured=decode_velocity(sample, sample.step_s),
        model_same_batch=decode_velocity(sample, _modelled_step(sample, step)),
        roofline=roofline_decode_velocity(sample.input_tokens, sample.output_tokens, step,
                                          capacity, tpot_s, headroom))


def decode_velocity(sample: LockstepSample, step_s: float) -> float:
    """V_D of a batch: its requests' tokens, input and output, completed every O steps."""
    per_request = sample.input_tokens + sample.output_tokens
    return sample.batch * per_request / (sample.output_tokens * step_s)


def _modelled_step(sample: LockstepSample, step: DecodeStep) -> float:
    mean_context = sample.batch * (sample.input_tokens + sample.output_tokens / 2)
    return decode_step_seconds(sample.batch, int(mean_context), step)


def _grid(cells: list[CellReport]) -> list[list[float]]:
    rows = 1 + max(c.row for c in cells)
    columns = 1 + max(c.column for c in cells)
    grid = [[0.0] * columns for _ in range(rows)]
    for cell in cells:
        grid[cell.row][cell.column] = float(math.floor(cell.measured))
    return grid


def provenance_of(m: Measurements, analysis: Analysis, headroom: float) -> dict[str, str]:
    """The `measured:` mapping of the profile's velocities: every value a string."""
    fit = analysis.step_fit
    levels = ", ".join(f"{lv.concurrency}x{lv.input_tokens}: {lv.tokens_per_s:,.0f}"
                       for lv in m.prefill_levels)
    ratios = " ".join(f"{c.measured / c.model_same_batch:.2f}" for c in analysis.cells)
    engine = m.engine
    return {
        "date": m.started_at,
        "engine": f"vllm {engine.version} ({engine.dtype.removeprefix('torch.')}, block "
                  f"{engine.block_size}, max_num_seqs {engine.max_num_seqs}, max_num_batched_"
                  f"tokens {engine.max_num_batched_tokens})",
        "method": f"tsslurm {__version__} profile{' --quick' if m.quick else ''}: V_P = plateau "
                  "of a closed-loop prefill concurrency sweep; decode step = relative non-negative "
                  "least squares over lockstep batches; V_D = lockstep batch per bucket at the "
                  f"largest batch within {headroom:g} x TPOT (or the KV / max_num_seqs cap); "
                  "V_N = inverse slope of timed KV pulls between two engines",
        "partition": m.partition,
        "node": m.node,
        "job": m.job_id,
        "resources": f"cpus {','.join(map(str, m.cpus))}; gpus {m.gpus or 'none'}; two engines, "
                     "one per half",
        "prefill_sweep": f"tokens/s at concurrency x prompt tokens: {levels}",
        "decode_step_fit": f"{fit.samples} runs, R^2 {fit.r_squared:.3f}, relative RMS error "
                           f"{fit.rms_relative_error:.1%}",
        "v_d_cells": "by row, input x output tokens -> batch measured, what capped it: "
                     + ", ".join(f"{c.input_tokens}x{c.output_tokens} -> {c.batch} {c.limited_by}"
                                 for c in analysis.cells),
        "v_d_over_step_model": f"measured / step model at the same batch, by row: {ratios}",
        "v_n": f"{len(m.pulls)} timed pulls of {m.pulls[0].input_tokens}-token prompts; fixed "
               f"latency {analysis.kv_latency_s * 1000:.1f} ms",
        "start": f"process start to first engine ready {m.model_load_s:.1f} s; engine starts "
                 + ", ".join(f"{s:.1f} s" for s in engine.start_s),
        "duration": f"{m.seconds:.0f} s",
        "engine_cpu_wait": _wait_text(m.engine_cpu_wait),
    }


def _wait_text(share: float | None) -> str:
    if share is None:
        return "not available (no schedstat for the engine's threads)"
    return (f"{share:.1%}: the share of the measuring time the measured engine's busiest thread "
            f"waited for a CPU (the job's own client shares its cores, as a launcher does; other "
            f"work there adds to this and slows every figure)")
