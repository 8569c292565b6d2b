"""KV bytes per token from model configurations: the tiny model, Llama-3-8B, a latent-attention
model, and configurations that do not say."""

from __future__ import annotations

import pytest

from tsslurm.models.tiny import LLAMA_CONFIG
from tsslurm.profiler.kvsize import ModelConfigError, dtype_bytes, kv_bytes_per_token

pytestmark = pytest.mark.timeout(30)

LLAMA3_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "hidden_size": 4096}


def test_the_tiny_model_in_float32() -> None:
    assert kv_bytes_per_token(LLAMA_CONFIG, dtype_bytes("torch.float32")) == 2 * 2 * 32 * 2 * 4


def test_llama3_8b_in_bf16_matches_the_reference_profiles() -> None:
    assert kv_bytes_per_token(LLAMA3_8B, dtype_bytes("bfloat16")) == 131072


def test_heads_without_kv_heads_mean_full_attention() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}
    assert kv_bytes_per_token(config, 2) == 2 * 4 * 64 * 2 * 2


def test_latent_attention_stores_the_compressed_latent() -> None:
    config = {"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
              "num_attention_heads": 128}
    assert kv_bytes_per_token(config, 2) == 61 * 576 * 2


def test_a_multimodal_config_uses_its_text_config() -> None:
    assert kv_bytes_per_token({"text_config": LLAMA3_8B}, 2) == 131072


@pytest.mark.parametrize("config", [{}, {"num_hidden_layers": 0, "num_attention_heads": 4},
                                    {"num_hidden_layers": "2", "num_attention_heads": 4}])
def test_configs_that_do_not_say_are_refused(config: dict) -> None:
    with pytest.raises(ModelConfigError, match="positive integer"):
        kv_bytes_per_token(config, 2)


def test_unknown_dtypes_are_refused() -> None:
    with pytest.raises(ModelConfigError, match="unknown KV dtype"):
        dtype_bytes("int3")
