"""CaptureWriter: an optional JSONL log of (request, primary answer, shadow answer) for offline review.

Off by default (a route's ``mirror.capture``). Each file is capped at ``max_bytes``; when full it is rotated to
``.1`` (older files shift up, ``keep`` are kept), like logrotate. Lines are small and written by the shadow task
after the comparison, off the client's path; a write error disables capture for that file instead of failing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gateway.wire import dumps

log = logging.getLogger("gateway.capture")


class CaptureWriter:
    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.broken = False

    def write(self, record: dict[str, Any]) -> None:
        if self.broken:
            return
        line = dumps(record) + b"\n"
        try:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(line)
        except OSError as exc:
            log.error("mirror capture to %s disabled: %s", self.path, exc)
            self.broken = True

    def _rotate(self) -> None:
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
