"""Text <-> token ids with a deployment's tokenizer, through the `tokenizers` library only (no torch,
no transformers), so it runs on the head node and in clients.

A tokenizer spec is a directory (or file) holding a Hugging Face `tokenizer.json`, or "bytes": the
byte tokenizer of mock deployments (the UTF-8 bytes are the ids; the mock engine emits printable
ASCII ids, so its answers read as text)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tsslurm.errors import UserError
from tsslurm.profile.schema import Profile

BYTES = "bytes"


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded."""


class Tokenizer(Protocol):
    spec: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class ByteTokenizer:
    spec = BYTES

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library."""

    def __init__(self, file: Path):
        import tokenizers

        self.spec = str(file)
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(f"cannot load tokenizer {file}: {error}") from None

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)


def tokenizer_spec(profile: Profile) -> str | None:
    """Where a deployment's tokenizer is: its tokenizer.json, "bytes" for a mock deployment
    without one, or None (clients and the broker then need token ids)."""
    file = _tokenizer_file(Path(profile.model.tokenizer or profile.model.path).expanduser())
    if file is not None:
        return str(file)
    return BYTES if profile.engine.kind == "mock" else None


def load_tokenizer(spec: str | None) -> Tokenizer | None:
    if spec is None:
        return None
    if spec == BYTES:
        return ByteTokenizer()
    file = _tokenizer_file(Path(spec).expanduser())
    if file is None:
        raise TokenizerError(f"no tokenizer.json at {spec}")
    return HuggingFaceTokenizer(file)


class IncrementalDecoder:
    """Text of a growing token list, released piece by piece (holds back a partial character)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._tokens: list[int] = []
        self._emitted = 0

    def push(self, token_ids: list[int]) -> str:
        self._tokens.extend(token_ids)
        text = self._tokenizer.decode(self._tokens)
        stable = len(text) - 1 if text.endswith("\ufffd") else len(text)
        if stable <= self._emitted:
            return ""
        piece, self._emitted = text[self._emitted:stable], stable
        return piece

    def flush(self) -> str:
        text = self._tokenizer.decode(self._tokens)
        piece, self._emitted = text[self._emitted:], len(text)
        return piece


def _tokenizer_file(path: Path) -> Path | None:
    if path.is_file() and path.name.endswith(".json"):
        return path
    candidate = path / "tokenizer.json"
    return candidate if candidate.is_file() else None
