"""The tiny model builder: deterministic from its seed, idempotent, atomic, careful with directories
it did not build, and a tokenizer the head node reads with `tokenizers` alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tsslurm.errors import UserError
from tsslurm.models.tiny import LLAMA_CONFIG, MARKER, VOCAB_SIZE, build_tiny_model

TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def digests(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(directory.iterdir())}


@pytest.mark.timeout(120)
def test_same_seed_same_model_other_seed_other_weights(tiny_model: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert digests(again) == digests(tiny_model)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert digests(other)["model.safetensors"] != digests(tiny_model)["model.safetensors"]
    assert digests(other)["tokenizer.json"] != digests(tiny_model)["tokenizer.json"]


@pytest.mark.timeout(60)
def test_the_model_is_the_documented_llama(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "head_dim",
                "num_key_value_heads", "tie_word_embeddings"):
        assert config[key] == LLAMA_CONFIG[key]
    assert config["head_dim"] >= 32, "vLLM's CPU attention needs head_dim >= 32"
    assert 3_000_000 < (tiny_model / "model.safetensors").stat().st_size < 4_000_000
    tokenizer_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "{{ bos_token }}" in (tiny_model / "chat_template.jinja").read_text()


@pytest.mark.timeout(60)
def test_the_tokenizer_round_trips_any_text_with_tokenizers_alone(tiny_model: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    for text in ("The quick brown fox jumps over the lazy dog.", "naïve café ∑ 😀",
                 "def f(x):\n    return x * 42\n"):
        ids = tokenizer.encode(text).ids
        assert all(4 <= i < VOCAB_SIZE for i in ids)
        assert tokenizer.decode(ids) == text
    english = tokenizer.encode("the sea and the story of a man who went to the shore").ids
    assert len(english) < 40, "BPE merges cover English-like text"


@pytest.mark.timeout(60)
def test_building_again_is_a_no_op(tiny_model: Path) -> None:
    before = {f.name: f.stat().st_mtime_ns for f in tiny_model.iterdir()}
    assert build_tiny_model(tiny_model, seed=0) == tiny_model
    assert {f.name: f.stat().st_mtime_ns for f in tiny_model.iterdir()} == before


@pytest.mark.timeout(120)
def test_another_seed_replaces_its_own_build_atomically(tmp_path: Path) -> None:
    target = build_tiny_model(tmp_path / "m", seed=3)
    rebuilt = build_tiny_model(target, seed=4)
    assert json.loads((rebuilt / MARKER).read_text())["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no staging directory is left"


@pytest.mark.timeout(60)
def test_a_directory_it_did_not_build_is_never_touched(tmp_path: Path) -> None:
    foreign = tmp_path / "weights"
    foreign.mkdir()
    (foreign / "mine.bin").write_bytes(b"precious")
    with pytest.raises(UserError, match="not built by tsslurm; refusing"):
        build_tiny_model(foreign)
    assert (foreign / "mine.bin").read_bytes() == b"precious"
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        build_tiny_model(file)


@pytest.mark.timeout(120)
def test_the_command_builds_and_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    built = subprocess.run([TSSLURM, "build-tiny-model", str(tmp_path / "cli"), "--seed", "2"],
                           capture_output=True, text=True, timeout=110, check=False)
    assert built.returncode == 0, built.stderr
    assert f"tiny model ready in {tmp_path / 'cli'}" in built.stdout
    assert json.loads((tmp_path / "cli" / MARKER).read_text())["seed"] == 2
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    refused = subprocess.run([TSSLURM, "build-tiny-model", str(tmp_path / "taken")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
