"""The gateway's text <-> token ids for one deployment: prompts encoded (chat prompts without
adding special tokens, since the chat template writes them), answers decoded exactly as the
tsslurm client decodes them, and, for byte-level tokenizers, the bytes of every token id, which
make streaming detokenization constant work per token (detokenize.py).

Reads the deployment's tokenizer.json with the `tokenizers` library only (no transformers, no
torch: the head node has neither). "bytes" is the mock deployments' byte tokenizer."""

from __future__ import annotations

import random
import re
from pathlib import Path

from tsslurm.errors import UserError
from tsslurm.tokenizer import BYTES

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class CodecError(UserError):
    """A deployment tokenizer the gateway cannot use."""


class TextCodec:
    """What the gateway needs of a tokenizer. `token_bytes[id]` is the UTF-8 bytes token `id`
    contributes to decoded text (b"" for special tokens), or None when the tokenizer's decoder is
    not a plain byte-level one. `byte_pieces` are the ids of sentencepiece byte-fallback tokens
    (`<0xNN>`) and of special tokens (which decode to nothing, so they do not end a run): a run
    of byte pieces decodes together, so its text is final only once the run ends."""

    spec: str
    vocab_size: int
    token_bytes: list[bytes] | None
    byte_pieces: frozenset[int] = frozenset()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, token_ids: list[int]) -> str:
        raise NotImplementedError


class ByteCodec(TextCodec):
    """UTF-8 bytes are the ids (the mock engine's tokenizer); decodes like tsslurm's ByteTokenizer."""

    spec = BYTES
    vocab_size = 256

    def __init__(self) -> None:
        self.token_bytes = [bytes([i]) for i in range(256)]

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")


class HuggingFaceCodec(TextCodec):
    """A tokenizer.json; decodes with skip_special_tokens like tsslurm.tokenizer."""

    def __init__(self, file: Path):
        import tokenizers

        self.spec = str(file)
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as error:  # noqa: BLE001 (tokenizers raises a bare Exception)
            raise CodecError(f"cannot load tokenizer {file}: {error}") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        table = _byte_level_table(self._tokenizer)
        self.token_bytes = table if table is not None and _agrees(self, table) else None
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        special = {i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special}
        pieces = {i for token, i in vocab.items() if _BYTE_PIECE.fullmatch(token)}
        self.byte_pieces = frozenset(pieces | special) if pieces else frozenset()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)


def load_codec(spec: str | None) -> TextCodec:
    """The codec of a connection file's tokenizer spec (a tokenizer.json path or "bytes")."""
    if spec is None:
        raise CodecError("the deployment has no tokenizer (its profile's model.path or "
                         "model.tokenizer holds no tokenizer.json); the gateway needs one to "
                         "turn text into tokens")
    if spec == BYTES:
        return ByteCodec()
    path = Path(spec).expanduser()
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        raise CodecError(f"no tokenizer.json at {spec}")
    return HuggingFaceCodec(file)


def model_directory(spec: str | None) -> Path | None:
    """The directory holding the tokenizer (and its tokenizer_config.json), if any."""
    if spec is None or spec == BYTES:
        return None
    path = Path(spec).expanduser()
    return path.parent if path.is_file() else path


def _byte_level_table(tokenizer: object) -> list[bytes] | None:
    import tokenizers

    if not isinstance(tokenizer.decoder, tokenizers.decoders.ByteLevel):  # type: ignore[attr-defined]
        return None
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)  # type: ignore[attr-defined]
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items()  # type: ignore[attr-defined]
               if token.special}
    table = [b""] * (max(vocab.values(), default=-1) + 1)
    to_byte = _unicode_to_byte()
    for token, token_id in vocab.items():
        if token_id not in special:
            table[token_id] = _token_bytes(token, to_byte)
    return table


def _token_bytes(token: str, to_byte: dict[str, int]) -> bytes:
    """As the ByteLevel decoder does: map each character back to its byte, or, when one character
    is not in the byte alphabet (an added token's text), keep the token's own UTF-8."""
    try:
        return bytes(to_byte[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable character alphabet (what byte-level BPE stores)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    mapping = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shifted)] = b
            shifted += 1
    return mapping


def _agrees(codec: HuggingFaceCodec, table: list[bytes], samples: int = 64) -> bool:
    """The table decodes seeded random id sequences exactly as the tokenizer does (else the
    gateway falls back to decoding windows of tokens)."""
    rng = random.Random(0)
    for _ in range(samples):
        ids = [rng.randrange(len(table)) for _ in range(rng.randint(1, 24))]
        if b"".join(table[i] for i in ids).decode("utf-8", errors="replace") != codec.decode(ids):
            return False
    return True
