"""Streaming detokenization: the text of a growing answer, released piece by piece, never splitting
a multi-byte UTF-8 character, with the pieces adding up to exactly the decode of all the tokens.
Pure: no I/O.

- ByteTableDecoder (byte-level tokenizers, the mock byte tokenizer): each token's bytes go through
  an incremental UTF-8 decoder, so a push costs the new tokens only.
- WindowDecoder (any other tokenizer): decodes a short window of recent tokens and releases what
  the window added; the window slides at each clean character boundary (so it stays a few tokens
  long) and always begins with tokens that make text. A trailing replacement character is held back until the bytes that complete it come,
  and so is the text of a trailing run of byte-fallback tokens (sentencepiece replaces every
  byte of a run that is not valid UTF-8, so a run's text is final only once it ends).
"""

from __future__ import annotations

import codecs
from typing import Protocol

from tsslurm.gateway.codec import TextCodec

REPLACEMENT = "\ufffd"


class StreamDecoder(Protocol):
    def push(self, token_ids: list[int]) -> str: ...

    def flush(self) -> str: ...


class ByteTableDecoder:
    def __init__(self, table: list[bytes]):
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: list[int]) -> str:
        table = self._table
        try:
            data = b"".join([table[i] for i in token_ids])
        except IndexError:  # ids past the tokenizer's vocabulary (a padded model vocabulary)
            size = len(table)
            data = b"".join([table[i] for i in token_ids if 0 <= i < size])
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class WindowDecoder:
    def __init__(self, codec: TextCodec):
        self._decode = codec.decode
        self._byte_pieces = codec.byte_pieces
        self._tokens: list[int] = []
        self._start = 0
        """First token of the window (earlier ones are fully released)."""
        self._read = 0
        """Tokens before this were released when the window last slid."""
        self._released = 0
        """Characters of decode(window) already released."""

    def push(self, token_ids: list[int]) -> str:
        tokens = self._tokens
        tokens.extend(token_ids)
        text = self._decode(tokens[self._start:])
        run = self._open_run()
        if run < len(tokens) or text.endswith(REPLACEMENT):
            settled = self._decode(tokens[self._start:run]) if run < len(tokens) else text
            return self._release_until(len(settled.rstrip(REPLACEMENT)), text)
        piece = text[self._released:]
        self._slide(text)
        return piece

    def _slide(self, text: str) -> None:
        """Start the window where the last one ended, unless those tokens make no text: a
        window must begin with text (decoders strip a leading space of what they decode)."""
        end = len(self._tokens)
        context = self._decode(self._tokens[self._read:end])
        if context:
            self._start, self._released = self._read, len(context)
        else:
            self._released = len(text)
        self._read = end

    def _open_run(self) -> int:
        """Where the trailing run of byte-fallback tokens begins (the end when there is none)."""
        at = len(self._tokens)
        while at > self._start and self._tokens[at - 1] in self._byte_pieces:
            at -= 1
        return at

    def _release_until(self, stable: int, text: str) -> str:
        piece = text[self._released:stable] if stable > self._released else ""
        self._released = max(self._released, stable)
        return piece

    def flush(self) -> str:
        text = self._decode(self._tokens[self._start:])
        piece = text[self._released:]
        self._released = len(text)
        return piece


def stream_decoder(codec: TextCodec) -> StreamDecoder:
    if codec.token_bytes is not None:
        return ByteTableDecoder(codec.token_bytes)
    return WindowDecoder(codec)
