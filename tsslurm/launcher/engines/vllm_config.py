"""What a vLLM engine is built from: its engine arguments, its KV connector and the environment its
engine-core process gets, all derived from the profile. No engine runs here; vllm is imported only
to build the argument objects."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsslurm.launcher.engines.base import EngineError
from tsslurm.profile.schema import Profile


def kv_connector_config(profile: Profile, kv_dir: Path) -> dict[str, Any]:
    """vLLM's KVTransferConfig fields: one connector in kv_both, so each request picks its role."""
    engine = profile.engine
    if engine.kv_connector == "example":
        return {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                "kv_connector_extra_config": {"shared_storage_path": str(kv_dir)}}
    check_nixl_dtype(engine.dtype)
    return {"kv_connector": "NixlConnector", "kv_role": "kv_both",
            "kv_buffer_device": "cpu" if is_cpu_build() else "cuda"}


def engine_env(kv_config: dict[str, Any], cpus: Sequence[int] | None,
               extra: Mapping[str, str]) -> dict[str, str]:
    """Variables the engine-core process must see: the model runs inside it (no extra worker
    process), one compute thread per pinned CPU, and NIXL's side channel."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if cpus is not None:
        env["OMP_NUM_THREADS"] = str(len(cpus))
    if kv_config["kv_connector"] == "NixlConnector":
        env.update(nixl_side_channel(extra))
    env.update(extra)
    return env


def engine_args(profile: Profile, model_dir: Path, kv_config: dict[str, Any]) -> Any:
    """AsyncEngineArgs from the profile; engine.extra_args go through unchanged."""
    from vllm.config import KVTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    model, engine = profile.model, profile.engine
    settings: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(Path(model.tokenizer).expanduser()) if model.tokenizer else None,
        "served_model_name": model.name,
        "dtype": engine.dtype,
        "tensor_parallel_size": model.tensor_parallel,
        "max_model_len": model.max_context_tokens,
        "kv_cache_memory_bytes": engine.kv_cache_bytes,
        "enforce_eager": engine.enforce_eager,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "kv_transfer_config": KVTransferConfig(**kv_config),
        "disable_log_stats": True,
    }
    settings.update(engine.extra_args)
    try:
        return AsyncEngineArgs(**settings)
    except TypeError as error:
        raise EngineError(f"engine.extra_args: {error} (keys must be vLLM engine "
                          f"arguments, e.g. max_num_seqs)") from None


def existing_model_dir(path: str) -> Path:
    model_dir = Path(path).expanduser()
    if not (model_dir / "config.json").is_file():
        hint = " (build it with `tsslurm build-tiny-model`)" if "tiny" in model_dir.name else ""
        raise EngineError(f"no model at {model_dir}: config.json is missing{hint}")
    return model_dir


def check_nixl_dtype(dtype: str) -> None:
    if is_cpu_build() and dtype not in ("float32", "float"):
        raise EngineError(f"engine.dtype {dtype!r} with the nixl connector on CPU: vLLM's bf16 "
                          f"CPU kernels crash the decoder (SIGILL); set engine.dtype: float32")


def nixl_side_channel(env: Mapping[str, str]) -> dict[str, str]:
    """The host and port a decoder uses to reach this engine's NIXL metadata: from the
    environment when set, else this node's address and a free port."""
    host = env.get("VLLM_NIXL_SIDE_CHANNEL_HOST") or os.environ.get(
        "VLLM_NIXL_SIDE_CHANNEL_HOST") or _node_address()
    port = env.get("VLLM_NIXL_SIDE_CHANNEL_PORT") or os.environ.get(
        "VLLM_NIXL_SIDE_CHANNEL_PORT") or str(_free_port(host))
    return {"VLLM_NIXL_SIDE_CHANNEL_HOST": host, "VLLM_NIXL_SIDE_CHANNEL_PORT": port}


def _node_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
