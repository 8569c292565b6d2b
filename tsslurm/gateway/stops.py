"""Stop strings (the OpenAI `stop` parameter) over streamed text: text is released as it comes
except a tail that could still become a stop string; when one appears, the text before it is the
last released and the answer ends. The answer ends where a generator producing one character at a
time would stop: at the stop string completed first (the earliest end; of two ending together, the
longer), so the result does not depend on how the text was chunked. Pure: no I/O."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        if not stops or any(not stop for stop in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = stops
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text now safe to release (all of it before a stop string, once one appears)."""
        if self.stopped or not text:
            return ""
        buffer = self._held + text
        end = self._first_stop(buffer)
        if end is not None:
            self.stopped = True
            self._held = ""
            return buffer[:end]
        keep = self._open_tail(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """The answer ended: a held tail that never became a stop string is released."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_stop(self, buffer: str) -> int | None:
        """Where the first completed stop string begins."""
        found = [(at + len(stop), at) for stop in self._stops if (at := buffer.find(stop)) >= 0]
        return min(found)[1] if found else None

    def _open_tail(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
