"""The vLLM engine's life outside the happy path, and the ExampleConnector: bad settings and a
failed start are EngineErrors, a killed engine process is reported (never a hang) and leaves no
process behind, and ExampleConnector files are found by a decoder and swept."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from vllm_helpers import tiny_profile

from tsslurm.launcher.engines.base import EngineError
from tsslurm.launcher.engines.vllm import VllmEngine, sweep_kv_files
from tsslurm.protocol import OutputItem, WorkItem


async def collect(engine: VllmEngine, item: WorkItem) -> list[OutputItem]:
    return [output async for output in engine.generate(item)]


def tokens_of(outputs: list[OutputItem]) -> list[int]:
    return [token for output in outputs for token in output.token_ids]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_a_missing_model_is_a_clear_engine_error(tmp_path: Path, runner: asyncio.Runner) -> None:
    engine = VllmEngine(tiny_profile(tmp_path / "tiny-llama"), tmp_path)
    with pytest.raises(EngineError, match="no model at .*tiny-llama.*build-tiny-model"):
        runner.run(engine.start())


@pytest.mark.timeout(60)
def test_bad_engine_settings_are_refused_before_any_start(tiny_model: Path, tmp_path: Path,
                                                          runner: asyncio.Runner) -> None:
    unknown = VllmEngine(tiny_profile(tiny_model, extra_args={"max_num_seqz": 4}), tmp_path)
    with pytest.raises(EngineError, match="engine.extra_args: .*max_num_seqz"):
        runner.run(unknown.start())
    bf16 = VllmEngine(tiny_profile(tiny_model, kv_connector="nixl", dtype="bfloat16"), tmp_path)
    with pytest.raises(EngineError, match="set engine.dtype: float32"):
        runner.run(bf16.start())
    assert unknown.engine_pids == [] and bf16.engine_pids == []


@pytest.mark.timeout(120)
def test_a_failed_start_is_an_engine_error_and_leaves_no_process(
        tiny_model: Path, tmp_path: Path, runner: asyncio.Runner) -> None:
    children = {child.pid for child in psutil.Process().children()}
    engine = VllmEngine(tiny_profile(tiny_model, kv_cache_bytes=4096), tmp_path)
    with pytest.raises(EngineError, match="vLLM engine failed to start"):
        runner.run(engine.start())
    left = [child for child in psutil.Process().children() if child.pid not in children
            and "resource_tracker" not in " ".join(child.cmdline())]
    assert [child for child in left if not gone(child.pid)] == []


@pytest.mark.timeout(120)
def test_a_start_past_its_timeout_is_an_engine_error_and_leaves_no_process(
        tiny_model: Path, tmp_path: Path, runner: asyncio.Runner) -> None:
    engine = VllmEngine(tiny_profile(tiny_model), tmp_path, start_timeout_s=0.5)
    with pytest.raises(EngineError, match="did not start within 0 s"):
        runner.run(engine.start())
    assert engine.engine_pids, "the engine process had been spawned"
    assert all(gone(pid) for pid in engine.engine_pids)


@pytest.mark.timeout(180)
def test_example_connector_hands_kv_over_files_then_a_killed_engine_is_reported(
        tiny_model: Path, tmp_path: Path, runner: asyncio.Runner) -> None:
    profile = tiny_profile(tiny_model, kv_connector="example",
                           extra_args={"enable_prefix_caching": False})
    engine = VllmEngine(profile, tmp_path / "state", cpus=[min(os.sched_getaffinity(0))])
    info = runner.run(engine.start())
    try:
        assert info.kv_connector["kv_connector"] == "ExampleConnector"
        prompt = list(range(100, 400))
        local = tokens_of(runner.run(collect(engine, WorkItem(
            request_id="local", mode="full", prompt_token_ids=prompt, max_tokens=12))))
        files = sorted(engine.kv_dir.iterdir())
        assert files, "the ExampleConnector wrote the prompt's KV under the state directory"
        for entry in files:
            for file in entry.iterdir():
                file.unlink()
            entry.rmdir()

        prefilled = runner.run(collect(engine, WorkItem(
            request_id="p", mode="prefill", prompt_token_ids=prompt, max_tokens=12)))
        params = prefilled[-1].kv_transfer_params
        assert params == {"kv_connector": "ExampleConnector", "remote_num_tokens": 300}
        external = engine.counters.prompt_tokens_external
        decoded = tokens_of(runner.run(collect(engine, WorkItem(
            request_id="d", mode="decode", prompt_token_ids=prompt, max_tokens=12,
            kv_transfer_params=params))))
        assert decoded == local
        assert engine.counters.prompt_tokens_external - external == 256, \
            "the block-aligned prefix (2 blocks of 128) came from the files"

        assert sweep_kv_files(engine.kv_dir, ttl_s=3600, now=time.time()) == 0
        assert sweep_kv_files(engine.kv_dir, ttl_s=0, now=time.time() + 1) == 1
        assert list(engine.kv_dir.iterdir()) == []

        os.kill(engine.engine_pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while engine.failed is None and time.monotonic() < deadline:
            runner.run(asyncio.sleep(0.1))
        assert isinstance(engine.failed, EngineError)
        assert re.search(r"died .*process \d+ (exited|killed by SIGKILL)", str(engine.failed))
        assert engine.stats().running == 0
        with pytest.raises(EngineError, match="died"):
            runner.run(collect(engine, WorkItem(request_id="late", mode="full",
                                                prompt_token_ids=[5, 6], max_tokens=2)))
    finally:
        runner.run(engine.shutdown())
    assert all(gone(pid) for pid in engine.engine_pids)
