"""Rate-limited log lines: bad input arrives in floods, the log gets one line per kind per interval
with the count of lines it held back."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        self._log(logging.WARNING, key, message, args)

    def error(self, key: str, message: str, *args: Any) -> None:
        self._log(logging.ERROR, key, message, args)

    def _log(self, level: int, key: str, message: str, args: tuple[Any, ...]) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" (and {held} more like it since the last line)" if held else ""
        self._logger.log(level, message + suffix, *args)
