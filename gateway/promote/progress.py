"""A one-line progress bar on stderr, silent when stderr is not a terminal (CI logs stay clean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    """``done/total`` requests with a bar, redrawn at most every ``interval_s`` seconds."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        width: int = 30,
    ) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._interval_s = interval_s
        self._clock = clock
        self._width = width
        self._started = clock()
        self._drawn = float("-inf")

    def advance(self, *, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        now = self._clock()
        if self.done == self.total or now - self._drawn >= self._interval_s:
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        if self._enabled and self.total:
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        if not self._enabled or not self.total:
            return
        filled = self._width * self.done // self.total
        bar = "#" * filled + "." * (self._width - filled)
        errors = f", {self.failed} failed" if self.failed else ""
        elapsed = now - self._started
        self._stream.write(f"\reval [{bar}] {self.done}/{self.total} requests{errors} {elapsed:.1f}s")
        self._stream.flush()
