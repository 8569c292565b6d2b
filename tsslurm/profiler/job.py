"""The profiling job: the function submitit runs on a partition's node (or, with --local, in a
subprocess here). It starts two engines of the profile's model the way a launcher would (one per
half of the job's CPUs and GPUs), measures prefill, the decode step, V_D per bucket and KV pulls,
and returns the raw Measurements, or a JobFailure naming the stage that failed and why.

vLLM is imported only inside the engines, when they start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from tsslurm.errors import UserError
from tsslurm.launcher.engines.base import EngineError, EngineInfo
from tsslurm.profile.schema import DecodeStep, Profile
from tsslurm.profiler.contention import ContentionWindow
from tsslurm.profiler.fit import MeasurementError, fit_decode_step, prefill_saturated
from tsslurm.profiler.kvsize import ModelConfigError, dtype_bytes, kv_bytes_per_token
from tsslurm.profiler.plan import Cell, Plan, make_plan, next_batch, predicted_batch
from tsslurm.profiler.probes import Prober
from tsslurm.profiler.results import (
    DecodeCell,
    EngineFacts,
    JobFailure,
    LockstepSample,
    Measurements,
    PrefillLevel,
    ProfileRequest,
    PullSample,
)

if TYPE_CHECKING:
    from tsslurm.launcher.engines.vllm import VllmEngine

log = logging.getLogger(__name__)

PULL_SHORTFALL = 0.9
"""A pull that brought less than 90 % of the prompt's tokens through the connector recomputed
the rest: the transfer did not happen as a decoder needs it."""


class Stage:
    """The step the job is at, so a failure can say what it was doing."""

    def __init__(self) -> None:
        self.name = "starting"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.name = name
        log.info("profiler: %s", name)
        yield


def measure_partition(request: ProfileRequest) -> Measurements | JobFailure:
    """The job's entry point (pickled by submitit): measurements, or why there are none."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stage = Stage()
    try:
        return asyncio.run(_measure(request, stage))
    except (UserError, EngineError, MeasurementError, ModelConfigError, ValueError,
            OSError) as error:
        log.exception("profiler: %s failed", stage.name)
        return JobFailure(stage=stage.name, message=str(error) or type(error).__name__,
                          node=node_name())


async def _measure(request: ProfileRequest, stage: Stage) -> Measurements:
    import psutil

    from tsslurm.launcher.engines.vllm import VllmEngine

    began = time.monotonic()
    process_start = psutil.Process().create_time()
    profile = measuring_profile(request.profile)
    cpus = sorted(os.sched_getaffinity(0))
    first_cpus, second_cpus = split_half(cpus)
    first_gpus, second_gpus = split_half(_visible_gpus())
    scratch = Path(tempfile.mkdtemp(prefix="tsslurm-profile-"))
    engines: list[VllmEngine] = []
    try:
        with stage("starting the first engine (the measured one)"):
            engines.append(VllmEngine(profile, scratch, cpus=first_cpus, env=_gpu_env(first_gpus)))
            info = await engines[0].start()
            model_load_s = time.time() - process_start
        with stage("starting the second engine (the decoder of the KV pulls)"):
            engines.append(VllmEngine(profile, scratch, cpus=second_cpus,
                                      env=_gpu_env(second_gpus)))
            await engines[1].start()
        facts = engine_facts(engines, info)
        with stage("reading the model configuration"):
            config = json.loads((Path(profile.model.path).expanduser() / "config.json").read_text())
            kv_bytes = kv_bytes_per_token(config, dtype_bytes(facts.dtype))
        plan = make_plan(profile, facts, request.quick)
        prober = Prober(int(config.get("vocab_size") or 32000), request.seed)
        contention = ContentionWindow(engines[0].engine_pids)
        _pin_this_process(first_cpus)
        levels, singles = await _prefill(prober, engines[0], plan, facts, stage)
        samples, cells = await _decode(prober, engines[0], plan, profile, request, stage)
        _pin_this_process(cpus)
        pulls = await _pulls(prober, engines[0], engines[1], plan, stage)
        engine_cpu_wait = contention.share()
    finally:
        await asyncio.gather(*(engine.shutdown() for engine in engines), return_exceptions=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return Measurements(
        partition=request.partition, node=node_name(), job_id=_job_id(),
        started_at=datetime.fromtimestamp(process_start, UTC).isoformat(timespec="seconds"),
        quick=request.quick, cpus=cpus, gpus=",".join(_visible_gpus()), engine=facts,
        model_load_s=model_load_s, kv_bytes_per_token=kv_bytes, prefill_levels=levels,
        prefill_singles=singles, decode_samples=samples, cells=cells, pulls=pulls,
        seconds=time.monotonic() - began, engine_cpu_wait=engine_cpu_wait)


def measuring_profile(profile: Profile) -> Profile:
    """The profile's engine with prefix caching on: the lockstep probe relies on it (it changes
    nothing a decode step does)."""
    extra = {**profile.engine.extra_args, "enable_prefix_caching": True}
    return msgspec.structs.replace(profile, engine=msgspec.structs.replace(
        profile.engine, extra_args=extra))


def engine_facts(engines: list[VllmEngine], info: EngineInfo) -> EngineFacts:
    config = engines[0].vllm_config
    scheduler = config.scheduler_config
    return EngineFacts(
        version=info.version, dtype=str(config.model_config.dtype),
        block_size=int(config.cache_config.block_size), max_num_seqs=int(scheduler.max_num_seqs),
        max_num_batched_tokens=int(scheduler.max_num_batched_tokens),
        kv_capacity_tokens=info.kv_capacity_tokens,
        start_s=[round(engine.start_seconds, 2) for engine in engines])


async def _prefill(prober: Prober, engine: VllmEngine, plan: Plan, facts: EngineFacts,
                   stage: Stage) -> tuple[list[PrefillLevel], list[PrefillLevel]]:
    levels: list[PrefillLevel] = []
    with stage("the prefill saturation sweep"):
        await prober.prefill_level(engine, 1, plan.prefill_tokens)
        concurrency = 1
        while concurrency <= plan.prefill_max_concurrency:
            runs = [await prober.prefill_level(engine, concurrency, plan.prefill_tokens)
                    for _ in range(plan.prefill_repeats)]
            levels.append(sorted(runs, key=lambda level: level.seconds)[len(runs) // 2])
            if prefill_saturated(levels, facts.max_num_batched_tokens):
                break
            concurrency *= 2
    with stage("single prefills of each input bucket's length"):
        singles = [await prober.prefill_level(engine, 1, tokens)
                   for tokens in plan.single_lengths for _ in range(plan.single_repeats)]
    return levels, singles


async def _decode(prober: Prober, engine: VllmEngine, plan: Plan, profile: Profile,
                  request: ProfileRequest, stage: Stage
                  ) -> tuple[list[LockstepSample], list[DecodeCell]]:
    with stage("lockstep decode runs for the decode step model"):
        samples = [await prober.lockstep(engine, batch, tokens, output)
                   for batch, tokens, output in plan.step_runs]
    target_s = request.headroom * profile.slo.tpot_ms / 1000
    cells = []
    for cell in plan.cells:
        with stage(f"V_D of bucket ({cell.row}, {cell.column}): {cell.input_tokens} in, "
                   f"{cell.output_tokens} out"):
            step = fit_decode_step(samples).step
            cells.append(await _cell(prober, engine, cell, step, target_s, plan.cell_trials))
            samples.append(cells[-1].sample)
    return samples, cells


async def _cell(prober: Prober, engine: VllmEngine, cell: Cell, step: DecodeStep, target_s: float,
                trials: int) -> DecodeCell:
    tried = []
    batch: int | None = predicted_batch(cell, step, target_s)
    while batch is not None and len(tried) < trials:
        tried.append(await prober.lockstep(engine, batch, cell.input_tokens, cell.output_tokens))
        batch = next_batch(cell, tried, target_s)
    met = [s for s in tried if s.step_s <= target_s]
    chosen = max(met, key=lambda s: s.batch) if met else min(tried, key=lambda s: s.batch)
    limited_by = cell.cap_reason if chosen.batch >= cell.batch_cap else "tpot"
    return DecodeCell(row=cell.row, column=cell.column, sample=chosen, limited_by=limited_by,
                      trials=len(tried))


async def _pulls(prober: Prober, prefiller: VllmEngine, decoder: VllmEngine, plan: Plan,
                 stage: Stage) -> list[PullSample]:
    def pulled() -> int:
        return decoder.counters.prompt_tokens_external

    with stage("KV pulls from the first engine to the second"):
        await prober.pull(prefiller, decoder, 1, plan.pull_tokens, pulled)
        pulls = [await prober.pull(prefiller, decoder, size, plan.pull_tokens, pulled)
                 for size in plan.pull_sizes for _ in range(plan.pull_repeats)]
    for sample in pulls:
        if sample.pulled_tokens < PULL_SHORTFALL * sample.requests * sample.input_tokens:
            raise MeasurementError(
                f"the decoder pulled {sample.pulled_tokens} of {sample.requests} x "
                f"{sample.input_tokens} prompt tokens through the KV connector: the KV transfer "
                f"did not happen (check engine.kv_connector and the engines' logs)")
    return pulls


def split_half(items: list) -> tuple[list, list]:
    """The first and second half (one shared item when there is only one)."""
    if len(items) < 2:
        return list(items), list(items)
    half = len(items) // 2
    return items[:half], items[half:]


def _visible_gpus() -> list[str]:
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def _gpu_env(gpus: list[str]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for one engine: its half of the job's GPUs (none on a CPU build)."""
    from tsslurm.launcher.engines.vllm_config import is_cpu_build

    return {} if not gpus or is_cpu_build() else {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}


def _pin_this_process(cpus: list[int]) -> None:
    """Run the probes' client side on the measured engine's CPUs, as a launcher shares them."""
    from tsslurm.launcher.engines.vllm_process import pin_process

    pin_process(os.getpid(), cpus)


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _job_id() -> str:
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return os.environ.get("SLURM_JOB_ID", "unknown")
    return "local"
