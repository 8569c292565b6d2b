"""KV-cache bytes per token from a Hugging Face model configuration: layers x KV heads x head dim
x 2 (key and value) x bytes per element, or the compressed latent of multi-head latent attention
(DeepSeek-style `kv_lora_rank`). Pure: no I/O (the caller reads config.json)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DTYPE_BYTES = {
    "float32": 4, "float": 4, "fp32": 4,
    "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8_e4m3": 1, "fp8_e5m2": 1,
}


class ModelConfigError(ValueError):
    """A configuration that does not say how large its KV cache is."""


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name as vLLM or torch spell it (`torch.float32`, `bf16`)."""
    key = name.removeprefix("torch.").lower()
    if key not in DTYPE_BYTES:
        known = ", ".join(sorted(DTYPE_BYTES))
        raise ModelConfigError(f"unknown KV dtype {name!r} (known: {known})")
    return DTYPE_BYTES[key]


def kv_bytes_per_token(config: Mapping[str, Any], element_bytes: int) -> int:
    """Bytes of KV cache one token occupies across the whole model (all tensor-parallel shards)."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" not in config:
        config = text
    layers = _positive_int(config, "num_hidden_layers")
    if config.get("kv_lora_rank"):
        latent = _positive_int(config, "kv_lora_rank") + int(config.get("qk_rope_head_dim") or 0)
        return layers * latent * element_bytes
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = config.get("head_dim") or _positive_int(config, "hidden_size") // heads
    return layers * kv_heads * int(head_dim) * 2 * element_bytes


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"model config has no positive integer {key!r} (got {value!r})")
    return value
