"""The gateway's text path: streamed detokenization equals decoding the whole answer, whatever the
chunking, for a byte-level BPE (the byte table), a sentencepiece-style tokenizer with byte
fallback (the window decoder) and the mock byte tokenizer, and never splits a multi-byte
character; stop strings end the text where a character-by-character generator would stop,
however it is chunked. Hypothesis runs derandomized (fixed examples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsslurm.gateway.codec import ByteCodec, HuggingFaceCodec, TextCodec, load_codec
from tsslurm.gateway.detokenize import ByteTableDecoder, WindowDecoder, stream_decoder
from tsslurm.gateway.stops import StopMatcher

pytestmark = pytest.mark.timeout(60)

CORPUS = ["Grüße aus Köln, naïve café déjà vu", "日本語のテキストと中文混合", "emoji 🙂🚀 and ✓ marks",
          "plain ascii words for the merges, again and again", "Ωμέγα και άλφα", "ünïcödé ßpäß"]
SPECIAL = ["<s>", "</s>", "<unk>"]


def _train(model: str, path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if model == "byte-level":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # sentencepiece-like: metaspace words, bytes as <0xNN> tokens for unknown characters
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "),
                                               decoders.ByteFallback(), decoders.Fuse(),
                                               decoders.Strip(" ", 1, 0)])
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=[]
                                  if model != "byte-level" else alphabet, show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    if model != "byte-level":
        tokenizer.add_tokens(alphabet)
    file = path / model / "tokenizer.json"
    file.parent.mkdir(parents=True)
    tokenizer.save(str(file))
    return file


@pytest.fixture(scope="module")
def codecs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TextCodec]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {"byte-level": load_codec(str(_train("byte-level", root))),
            "metaspace": load_codec(str(_train("metaspace", root).parent)),
            "bytes": load_codec("bytes")}


def _stream(decoder, ids: list[int], cuts: list[int]) -> list[str]:
    pieces, start = [], 0
    for cut in sorted(set(cuts)) + [len(ids)]:
        if start <= cut:
            pieces.append(decoder.push(ids[start:cut]))
            start = cut
    pieces.append(decoder.flush())
    return pieces


def test_the_decoders_chosen(codecs: dict[str, TextCodec]) -> None:
    assert codecs["byte-level"].token_bytes is not None, "byte-level BPE gets the byte table"
    assert codecs["metaspace"].token_bytes is None
    assert isinstance(stream_decoder(codecs["byte-level"]), ByteTableDecoder)
    assert isinstance(stream_decoder(codecs["metaspace"]), WindowDecoder)
    assert isinstance(stream_decoder(codecs["bytes"]), ByteTableDecoder)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_streamed_text_adds_up_to_the_whole_decode(codecs: dict[str, TextCodec],
                                                   data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(codecs)))
    codec = codecs[name]
    ids = data.draw(st.lists(st.integers(0, codec.vocab_size - 1), max_size=40))
    cuts = data.draw(st.lists(st.integers(0, len(ids)), max_size=12))
    for decoder in (stream_decoder(codec), WindowDecoder(codec)):
        assert "".join(_stream(decoder, ids, cuts)) == codec.decode(ids)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                    max_size=30), name=st.sampled_from(["byte-level", "metaspace", "bytes"]))
def test_valid_text_streams_without_replacement_characters(codecs: dict[str, TextCodec],
                                                           text: str, name: str) -> None:
    codec = codecs[name]
    ids = codec.encode(text, add_special_tokens=False)
    for decoder in (stream_decoder(codec), WindowDecoder(codec)):
        pieces = [decoder.push([token]) for token in ids] + [decoder.flush()]
        assert "".join(pieces) == codec.decode(ids)
        if "\ufffd" not in codec.decode(ids):
            assert not any("\ufffd" in piece for piece in pieces), "a character was split"


def test_a_multibyte_character_is_released_whole() -> None:
    decoder = stream_decoder(ByteCodec())
    assert [decoder.push([b]) for b in "é🙂".encode()] == ["", "é", "", "", "", "🙂"]
    window = WindowDecoder(ByteCodec())
    assert [window.push([b]) for b in "ab€".encode()] == ["a", "b", "", "", "€"]
    assert window.flush() == ""


def test_an_invalid_byte_is_held_only_until_the_answer_moves_on() -> None:
    decoder = stream_decoder(ByteCodec())
    assert decoder.push([0xE2, 0x82]) == ""
    assert decoder.push([ord("x")]) == "\ufffdx"
    assert decoder.push([0xF0]) == "" and decoder.flush() == "\ufffd"


def test_ids_beyond_the_vocabulary_are_skipped_like_the_tokenizer_does(
        codecs: dict[str, TextCodec]) -> None:
    codec = codecs["byte-level"]
    ids = codec.encode("café au lait", add_special_tokens=False)
    padded = ids[:2] + [codec.vocab_size + 7] + ids[2:]
    assert "".join(_stream(stream_decoder(codec), padded, [1, 3])) == codec.decode(ids)


def test_special_tokens_add_no_text(codecs: dict[str, TextCodec]) -> None:
    codec = codecs["byte-level"]
    assert isinstance(codec, HuggingFaceCodec)
    ids = codec.encode("<s>hello</s>", add_special_tokens=False)
    assert ids[0] == SPECIAL.index("<s>") and ids[-1] == SPECIAL.index("</s>")
    assert "".join(_stream(stream_decoder(codec), ids, [1, 2])) == "hello" == codec.decode(ids)


def test_a_tokenizer_json_path_or_its_directory_loads(codecs, tmp_path: Path) -> None:
    from tsslurm.gateway.codec import CodecError

    with pytest.raises(CodecError, match="no tokenizer.json"):
        load_codec(str(tmp_path))
    with pytest.raises(CodecError, match="has no tokenizer"):
        load_codec(None)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(CodecError, match="cannot load tokenizer"):
        load_codec(str(tmp_path))


def first_completed_stop(text: str, stops: list[str]) -> int | None:
    """Where a character-by-character generator stops: grow the text one character at a time
    until it ends with a stop string (the longest, when several end there)."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if text[:end].endswith(stop)]
        if ending:
            return end - max(len(stop) for stop in ending)
    return None


@settings(max_examples=600, deadline=None, derandomize=True)
@given(text=st.text(alphabet="abc", max_size=40),
       stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 40), max_size=10))
def test_stop_strings_end_the_text_where_generation_would(text: str, stops: list[str],
                                                          cuts: list[int]) -> None:
    at = first_completed_stop(text, stops)
    expected = text if at is None else text[:at]
    found = at is not None
    matcher = StopMatcher(tuple(stops))
    released, start = [], 0
    for cut in sorted(c for c in set(cuts) if c <= len(text)) + [len(text)]:
        released.append(matcher.push(text[start:cut]))
        start = cut
    released.append(matcher.flush())
    assert "".join(released) == expected
    assert matcher.stopped == found


def test_text_that_may_begin_a_stop_string_is_held_back() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.push("the E") == "the "
    assert matcher.push("N") == ""
    assert matcher.push("D and more") == "" and matcher.stopped
    other = StopMatcher(("END",))
    assert other.push("the EN") == "the " and other.push("d") == "ENd"
    shorter_first = StopMatcher(("c", "aca"))
    assert shorter_first.push("aac") == "aa" and shorter_first.stopped, "c completes first"
    with pytest.raises(ValueError):
        StopMatcher(("",))
