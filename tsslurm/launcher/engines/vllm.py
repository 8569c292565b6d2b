"""The real engine behind the launcher: a vLLM `AsyncLLM` built from the profile, in the launcher's
process (its engine core, with the model, in one child process).

It owns the translation between tsslurm's WorkItems and vLLM requests (token ids in, token-id
deltas out, `kv_transfer_params` in and out), the KV connector configuration (NixlConnector, or
ExampleConnector over a shared directory whose files it sweeps), the engine's own statistics
(through a vLLM stat logger, no scraping) and turning every engine failure into an EngineError.

One engine serves every role: the connector runs with kv_role "kv_both" and each request's mode
decides what it does. "prefill" asks for remote decode and returns no tokens (the decoder
generates the first token itself from the pulled KV); "decode" pulls the KV its params name;
"full" prefills and decodes locally, which is what a convertible decoder does with a burst.

Only APIs the CPU and CUDA builds of vLLM share are used; vllm is imported only when an engine
starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from tsslurm.launcher.engines.base import EngineError, EngineInfo
from tsslurm.launcher.engines.vllm_config import (
    engine_args,
    engine_env,
    existing_model_dir,
    kv_connector_config,
)
from tsslurm.launcher.engines.vllm_process import (
    Watchdog,
    child_pids,
    environment,
    exit_status,
    pin_process,
    reap,
)
from tsslurm.launcher.engines.vllm_stats import EngineCounters, StatsCollector
from tsslurm.profile.schema import Profile
from tsslurm.protocol import OutputItem, Sampling, WorkerStats, WorkItem

log = logging.getLogger(__name__)

PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}
"""What a prefill request carries: keep the KV for a remote decoder (vLLM's disaggregation API)."""

KV_FILE_TTL_S = 480.0
"""ExampleConnector files older than this are deleted (NIXL's own default block TTL)."""

START_TIMEOUT_S = 600.0
"""vLLM waits for its engine process without limit; a start that takes longer than this fails."""

_spawn_lock = threading.Lock()
"""vLLM reads its settings from the environment of the engine-core process it spawns, so engines
in one process (tests) take turns to set their environment until their process is spawned."""


class VllmEngine:
    """A vLLM AsyncLLM serving WorkItems. The constructor only records settings; `start` loads."""

    def __init__(self, profile: Profile, state_dir: str | os.PathLike[str], *,
                 cpus: Sequence[int] | None = None, env: Mapping[str, str] | None = None,
                 kv_file_ttl_s: float = KV_FILE_TTL_S,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        """`cpus` pins the engine process to these CPUs with one compute thread each (e.g. [0]
        and [1] for two engines on two cores); by default it keeps this process's CPUs (a Slurm
        job's allocation, or a test's taskset). `env` adds variables for the engine process
        (e.g. VLLM_NIXL_SIDE_CHANNEL_HOST)."""
        self.profile = profile
        self.state_dir = Path(state_dir).expanduser()
        self.cpus = sorted(set(cpus)) if cpus is not None else None
        self.extra_env = dict(env or {})
        self.kv_file_ttl_s = kv_file_ttl_s
        self.start_timeout_s = start_timeout_s
        self.counters = EngineCounters()
        self._collector = StatsCollector(self.counters)
        self._llm: Any = None
        self._capacity_tokens = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.start_seconds = 0.0
        self._death: str | None = None
        self._in_flight: dict[str, None] = {}
        self._watchdog: Watchdog | None = None
        self._connector = ""
        self.engine_pids: list[int] = []
        """The engine-core processes this engine started (children of this process)."""

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        """Load the model and start the engine core; raises EngineError with the reason."""
        began = time.monotonic()
        model_dir = existing_model_dir(self.profile.model.path)
        kv_config = kv_connector_config(self.profile, self.kv_dir)
        self._connector = kv_config["kv_connector"]
        env = engine_env(kv_config, self.cpus, self.extra_env)
        args = engine_args(self.profile, model_dir, kv_config)
        if self._connector == "ExampleConnector":
            self.kv_dir.mkdir(parents=True, exist_ok=True)
        self._llm = await asyncio.to_thread(self._spawn, args, env)
        self._capacity_tokens = _kv_capacity_tokens(self._llm)
        if kv_config["kv_connector"] == "ExampleConnector":
            self._sweeper = asyncio.create_task(self._sweep_kv_files_forever())
        self.start_seconds = time.monotonic() - began
        log.info("vLLM engine ready in %.1f s (KV capacity %d tokens, connector %s)",
                 self.start_seconds, self._capacity_tokens, kv_config["kv_connector"])
        return EngineInfo(engine="vllm", version=_vllm_version(), kv_connector=kv_config,
                          kv_capacity_tokens=self._capacity_tokens)

    async def shutdown(self) -> None:
        """Stop the engine core process and every task; idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        llm, self._llm = self._llm, None
        if llm is None:
            return
        handler = getattr(llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
        await asyncio.to_thread(llm.shutdown)
        await asyncio.to_thread(reap, self.engine_pids)
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.stop)
        totals = self.counters
        log.info("vLLM engine stopped; prompt tokens: %d computed, %d from the local prefix cache, "
                 "%d pulled through the KV connector; %d tokens generated, %d requests finished",
                 totals.prompt_tokens_computed, totals.prompt_tokens_local_cache,
                 totals.prompt_tokens_external, totals.generation_tokens, totals.finished_requests)

    # ---- serving -----------------------------------------------------------------------------

    async def generate(self, item: WorkItem) -> AsyncIterator[OutputItem]:
        """Stream one request's token deltas; the last output has finish_reason (and, for a
        prefill, the engine's kv_transfer_params). A request the engine rejects ends with an
        output carrying `error`; a dead engine raises EngineError."""
        llm = self._running_engine()
        from vllm.inputs import TokensPrompt

        self._in_flight[item.request_id] = None
        try:
            params = self._sampling_params(item)
            prompt = TokensPrompt(prompt_token_ids=list(item.prompt_token_ids))
            async with contextlib.aclosing(llm.generate(prompt, params, item.request_id)) as stream:
                async for output in stream:
                    yield _to_output_item(item, output, self._connector)
        except (asyncio.CancelledError, GeneratorExit, EngineError):
            raise
        except Exception as error:  # noqa: BLE001 (vLLM rejects requests with many error types)
            self._raise_if_dead(error)
            yield OutputItem(request_id=item.request_id, finish_reason="abort",
                             error=f"vLLM rejected the request: {_describe(error)}")
        finally:
            self._in_flight.pop(item.request_id, None)

    def in_flight(self) -> list[str]:
        """Request ids whose streams are open, oldest first."""
        return list(self._in_flight)

    @property
    def failed(self) -> BaseException | None:
        """An EngineError when the engine has died, else None."""
        if self._llm is not None and self._llm.errored:
            return EngineError(self._death_notice())
        return None

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason "abort". Unknown ids are ignored."""
        if self._llm is not None:
            await self._llm.abort(request_id)

    def stats(self) -> WorkerStats:
        """The engine's latest scheduler stats and token rates (the last known ones once it has
        stopped: `failed` says whether it died)."""
        return self._collector.worker_stats(self._capacity_tokens, time.monotonic())

    @property
    def vllm_config(self) -> Any:
        """The running engine's resolved vLLM configuration (model, cache, scheduler)."""
        return self._running_engine().vllm_config

    @property
    def kv_dir(self) -> Path:
        """Where the ExampleConnector keeps KV files: under the deployment state directory."""
        return self.state_dir / "kv-example"

    # ---- starting ----------------------------------------------------------------------------

    def _spawn(self, args: Any, env: dict[str, str]) -> Any:
        """Build the AsyncLLM in a thread of its own; hold the environment only until the engine
        process exists, so engines of one process start side by side; bounded by the timeout."""
        from vllm.v1.engine.async_llm import AsyncLLM

        building: Future[Any] = Future()

        def build() -> None:
            try:
                building.set_result(AsyncLLM.from_engine_args(
                    args, stat_loggers=[self._collector.factory]))
            except BaseException as error:  # noqa: BLE001 (handed to the waiting thread)
                building.set_exception(error)

        with _spawn_lock, environment(env):
            before = child_pids()
            threading.Thread(target=build, name="vllm-engine-start", daemon=True).start()
            self.engine_pids = sorted(_new_children(before, building))
            self._watchdog = Watchdog(self.engine_pids) if self.engine_pids else None
        try:
            llm = self._built(building)
        except EngineError:
            if self._watchdog is not None:
                self._watchdog.stop()
            raise
        for pid in self.engine_pids:
            pin_process(pid, self.cpus or sorted(os.sched_getaffinity(0)))
        return llm

    def _built(self, building: Future[Any]) -> Any:
        try:
            return building.result(timeout=self.start_timeout_s)
        except FutureTimeout:
            reap(self.engine_pids, timeout_s=0.0)
            raise EngineError(f"the vLLM engine did not start within {self.start_timeout_s:.0f} s; "
                              f"its process was stopped") from None
        except Exception as error:
            reap(self.engine_pids, timeout_s=5.0)
            raise EngineError(f"vLLM engine failed to start: {_describe(error)}") from error

    def _sampling_params(self, item: WorkItem) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if item.mode not in ("prefill", "decode", "full"):
            raise ValueError(f"unknown work mode {item.mode!r} (prefill, decode or full)")
        kv_params = _kv_params_for(item)
        sampling: Sampling = item.sampling
        return SamplingParams(
            max_tokens=1 if item.mode == "prefill" else item.max_tokens,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            seed=sampling.seed, stop_token_ids=list(sampling.stop_token_ids),
            ignore_eos=sampling.ignore_eos, output_kind=RequestOutputKind.DELTA,
            extra_args={"kv_transfer_params": kv_params} if kv_params is not None else None)

    # ---- failures and housekeeping -----------------------------------------------------------

    def _running_engine(self) -> Any:
        if self._llm is None:
            raise EngineError("the vLLM engine is not running (not started, or shut down)")
        if self._llm.errored:
            raise EngineError(self._death_notice())
        return self._llm

    def _raise_if_dead(self, error: BaseException) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(error, EngineDeadError) or (self._llm is not None and self._llm.errored):
            raise EngineError(self._death_notice()) from error

    def _death_notice(self) -> str:
        if self._death is None:
            exits = [f"process {pid} {exit_status(pid)}" for pid in self.engine_pids]
            self._death = f"the vLLM engine died ({', '.join(exits) or 'no engine process'})"
        return self._death

    async def _sweep_kv_files_forever(self) -> None:
        while True:
            await asyncio.to_thread(sweep_kv_files, self.kv_dir, self.kv_file_ttl_s, time.time())
            await asyncio.sleep(max(self.kv_file_ttl_s / 4, 1.0))


def sweep_kv_files(directory: Path, ttl_s: float, now: float) -> int:
    """Delete ExampleConnector entries (one directory per prompt) older than ttl_s; the count."""
    removed = 0
    for entry in _entries(directory):
        try:
            if now - entry.stat().st_mtime > ttl_s:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _entries(directory: Path) -> list[Path]:
    try:
        return [entry for entry in directory.iterdir() if entry.is_dir()]
    except FileNotFoundError:
        return []


def _kv_params_for(item: WorkItem) -> dict[str, Any] | None:
    if item.mode == "prefill":
        return dict(PREFILL_PARAMS)
    if item.mode == "decode":
        if item.kv_transfer_params is None:
            raise ValueError("a decode work item needs the prefill's kv_transfer_params")
        return item.kv_transfer_params
    return None


def _to_output_item(item: WorkItem, output: Any, connector: str) -> OutputItem:
    completion = output.outputs[0] if output.outputs else None
    finish_reason = completion.finish_reason if output.finished and completion else None
    if output.finished and finish_reason is None:
        finish_reason = "abort"
    if finish_reason == "error":
        return OutputItem(request_id=item.request_id, finish_reason="abort",
                          error=_request_failure(item))
    if item.mode == "prefill":
        params = _prefill_answer(item, output, connector) if output.finished else None
        return OutputItem(request_id=item.request_id, finish_reason=finish_reason,
                          kv_transfer_params=params)
    tokens = list(completion.token_ids) if completion else []
    return OutputItem(request_id=item.request_id, token_ids=tokens, finish_reason=finish_reason)


def _prefill_answer(item: WorkItem, output: Any, connector: str) -> dict[str, Any]:
    """What a decoder needs: NIXL answers its own params; the ExampleConnector answers none (a
    decoder finds the KV files by the prompt), so say where the KV went."""
    if output.kv_transfer_params:
        return _plain(output.kv_transfer_params)
    return {"kv_connector": connector, "remote_num_tokens": len(item.prompt_token_ids)}


def _request_failure(item: WorkItem) -> str:
    if item.mode == "decode":
        params = item.kv_transfer_params or {}
        return (f"the KV transfer from the prefiller failed (engine "
                f"{params.get('remote_engine_id')!r} at {params.get('remote_host')}:"
                f"{params.get('remote_port')}); the request needs a new prefill")
    return "vLLM failed the request (finish reason error); see the worker log"


def _plain(value: Any) -> Any:
    """kv_transfer_params as plain msgpack-able values (vLLM may put tuples in them)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(inner) for inner in value]
    return value


def _kv_capacity_tokens(llm: Any) -> int:
    cache = llm.vllm_config.cache_config
    return int((cache.num_gpu_blocks or 0) * cache.block_size)


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    cause = error.__cause__
    return f"{text} (caused by {type(cause).__name__}: {cause})" if cause else text


def _new_children(before: set[int], building: Future[Any]) -> set[int]:
    """The engine-core process(es) a starting AsyncLLM spawned: children new since `before` that
    are still there a moment later (a short-lived helper process, or another engine's watchdog
    between fork and exec, is not an engine)."""
    while not building.done():
        seen = child_pids() - before
        if seen:
            time.sleep(0.2)
            lasting = seen & child_pids()
            if lasting:
                return lasting
        time.sleep(0.05)
    return child_pids() - before
