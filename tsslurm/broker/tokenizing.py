"""Text prompts tokenized off the broker's loop: a small thread pool encodes, results come back
through a deque and a wake-up message on an inproc socket the loop polls."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import zmq

from tsslurm.tokenizer import Tokenizer

TokenizeResult = tuple[str, list[int] | None, str | None]
"""(request id, token ids or None, problem or None)."""


class TokenizerPool:
    def __init__(self, context: zmq.Context, tokenizer: Tokenizer, threads: int = 2):
        self._tokenizer = tokenizer
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tsslurm-tokenize")
        self._results: deque[TokenizeResult] = deque()
        endpoint = f"inproc://tsslurm-tokenize-{id(self)}-{next(_counter)}"
        self.socket = context.socket(zmq.PULL)
        self.socket.bind(endpoint)
        self._wake = context.socket(zmq.PUSH)
        self._wake.connect(endpoint)
        self._wake_lock = threading.Lock()

    def submit(self, request_id: str, text: str) -> None:
        self._executor.submit(self._encode, request_id, text)

    def results(self) -> list[TokenizeResult]:
        """What finished since the last call (call when `socket` is readable)."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        results = list(self._results)
        for _ in results:
            self._results.popleft()
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._wake.close(linger=0)
        self.socket.close(linger=0)

    def _encode(self, request_id: str, text: str) -> None:
        try:
            result: TokenizeResult = (request_id, self._tokenizer.encode(text), None)
        except Exception as error:  # noqa: BLE001 - the request's problem, not the loop's
            result = (request_id, None, f"{type(error).__name__}: {error}")
        self._results.append(result)
        with self._wake_lock:
            try:
                self._wake.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # wake-ups are already pending; the loop drains every result on one


_counter = itertools.count()
