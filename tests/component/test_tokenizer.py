"""A deployment with a real tokenizer.json (trained here with the `tokenizers` library, no
download): clients tokenize and detokenize with it, the broker tokenizes text prompts with it off
its loop, streamed text pieces add up to the whole answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.tokenizer import HuggingFaceTokenizer, TokenizerError, load_tokenizer

pytestmark = pytest.mark.timeout(90)

CORPUS = ["the broker routes each request to a prefiller and then to a decoder",
          "tokens stream back to the client one decode iteration at a time",
          "a convertible decoder takes a burst of prefills itself"] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def test_the_deployment_tokenizer_end_to_end(deployment, tokenizer_dir: Path) -> None:
    d = deployment(tok="path: mock://no-weights=>path: mock://no-weights\n  tokenizer: "
                       + str(tokenizer_dir))
    connection = d.start_broker()
    assert connection.tokenizer == str(tokenizer_dir / "tokenizer.json")
    d.start_worker("d1", "decode")
    local = HuggingFaceTokenizer(tokenizer_dir / "tokenizer.json")
    prompt = "the broker routes a burst of tokens"
    ids = local.encode(prompt)
    expected = mock_continuation(ids, 24)
    with d.sync_client(timeout_s=30) as client:
        result = client.generate(prompt, max_tokens=24)
        pieces = list(client.stream(prompt, max_tokens=24))
        client.tokenizer = None  # send the text: the broker tokenizes it
        by_broker = client.generate(prompt, max_tokens=24)
    assert result.token_ids == expected and result.text == local.decode(expected)
    assert [t for piece in pieces for t in piece.token_ids] == expected
    assert "".join(piece.text or "" for piece in pieces) == local.decode(expected)
    assert by_broker.token_ids == expected and by_broker.prompt_tokens == len(ids)


def test_tokenizer_specs(tokenizer_dir: Path, tmp_path: Path) -> None:
    assert load_tokenizer(None) is None
    assert load_tokenizer("bytes").decode(load_tokenizer("bytes").encode("héllo")) == "héllo"
    by_dir = load_tokenizer(str(tokenizer_dir))
    by_file = load_tokenizer(str(tokenizer_dir / "tokenizer.json"))
    assert by_dir.encode("the decoder") == by_file.encode("the decoder") != []
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path))
