"""The tiny test model: a 0.8 M-parameter Llama and a byte-level BPE tokenizer, built with no download.

Everything is deterministic from a seed: the tokenizer is trained on a synthetic corpus drawn from
a seeded generator (so it does not depend on the files of the machine), and the weights come from
a seeded initialiser. `build_tiny_model` writes a Hugging Face model directory that vLLM loads
like any other; it is idempotent (a marker file records what was built) and atomic (the model is
built next to its target and renamed into place).

Needs the engine extra (torch, transformers); they are imported inside the functions."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tsslurm.errors import UserError

MARKER = "tsslurm-tiny-model.json"
SPEC_VERSION = 1
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
LLAMA_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "initializer_range": 0.2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
}
"""The CPU attention backend needs head_dim >= 32; initializer_range=0.2 makes greedy outputs
stable enough to compare token for token (../shared/notes/vllm-cpu.md)."""

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "th", "st",
           "pr", "ch", "sh", "tr", "gr"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st", "rt", "ck"]
_PUNCTUATION = [".", ",", ";", ":", "?", "!", "(", ")", "=", "-", "'", '"', "0", "1", "2", "42"]


def build_tiny_model(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny model into `directory` (created) unless it already holds this exact build.

    Returns the directory. Refuses a non-empty directory that tsslurm did not build."""
    target = Path(directory).expanduser().resolve()
    wanted = _spec(seed)
    if _existing_spec(target) == wanted:
        return target
    _refuse_foreign(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        _write_tokenizer(staging, seed)
        _write_model(staging, seed)
        (staging / MARKER).write_text(json.dumps(wanted, sort_keys=True) + "\n")
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def synthetic_corpus(seed: int, sentences: int = 6000) -> list[str]:
    """English-looking text from a seeded generator: words of syllables with Zipf-like frequency."""
    rng = random.Random(seed)
    words = _word_list(rng, 1500)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    lines = []
    for _ in range(sentences):
        chosen = rng.choices(words, weights, k=rng.randint(4, 16))
        if rng.random() < 0.3:
            chosen.insert(rng.randrange(len(chosen)), rng.choice(_PUNCTUATION))
        lines.append(" ".join(chosen).capitalize() + rng.choice([".", ".", "?", "!"]))
    return lines


def _word_list(rng: random.Random, count: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.choices([1, 2, 3], [5, 3, 1])[0]
        words["".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                      for _ in range(syllables))] = None
    return list(words)


def _spec(seed: int) -> dict[str, Any]:
    return {"spec_version": SPEC_VERSION, "seed": seed, "vocab_size": VOCAB_SIZE,
            "config": LLAMA_CONFIG}


def _existing_spec(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _refuse_foreign(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory; pick another model directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).exists():
        raise UserError(f"{target} is not empty and was not built by tsslurm; refusing to "
                        f"overwrite it (remove it or pick another directory)")


def _replace(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staging.rename(target)


def _write_tokenizer(directory: Path, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(synthetic_corpus(seed), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=LLAMA_CONFIG["max_position_embeddings"])
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(directory))
    _portable_tokenizer_class(directory / "tokenizer_config.json")


def _portable_tokenizer_class(config_file: Path) -> None:
    """Name the class every transformers release knows (5.x writes its own new name)."""
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_model(directory: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = LlamaConfig(**LLAMA_CONFIG, torch_dtype="float32")
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(directory), safe_serialization=True)
