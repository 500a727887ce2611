"""CaptureSink: one JSONL file fed through a bounded queue and written by its own daemon thread.

The event loop only offers a record (``put_nowait``: a lock and an append). When the queue is full the record is
dropped and counted, so a slow or stuck disk never slows a request. The writer thread renders records (routing
features, redaction, JSON) and appends whole lines in batches, rotating the file at ``max_bytes`` like logrotate
(``.1`` is the newest of ``keep`` older files; a file grows past ``max_bytes`` only to hold one larger record). A
write error costs the batch, is counted and is logged at most once a minute; the next batch tries again, so a
full disk that frees up, or a directory that appears, is written to again. Counts go back to the loop through
``call_soon_threadsafe``: the metric series are updated from the loop thread only (gateway.telemetry.series).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from gateway.capture.record import Pending, render
from gateway.telemetry.metrics import GatewayMetrics
from gateway.wire import dumps

log = logging.getLogger("gateway.capture")

BATCH = 512
"""Records rendered and appended per open of the file."""
ERROR_LOG_EVERY_S = 60.0
CLOSE_TIMEOUT_S = 10.0
FILE_MODE = 0o600  # records can hold prompts: readable by the gateway's user only


class CaptureSink:
    def __init__(
        self, path: Path, *, kind: str, max_bytes: int, keep: int, queue_size: int, metrics: GatewayMetrics
    ) -> None:
        """Made on the event loop (its counts are reported there); starts the writer thread."""
        self.path = path
        self.kind = kind
        self.max_bytes = max_bytes
        self.keep = keep
        self._queue: queue.Queue[Pending | None] = queue.Queue(queue_size)
        self._loop = asyncio.get_running_loop()
        self._written = metrics.capture_records.labels(kind, "written")
        self._errors = metrics.capture_records.labels(kind, "error")
        self._dropped = metrics.capture_records.labels(kind, "dropped")
        self._closed = False
        self._stopping = threading.Event()
        self._logged_at = -ERROR_LOG_EVERY_S
        self._unlogged = 0
        self._thread = threading.Thread(target=self._run, name=f"capture-{kind}", daemon=True)
        self._thread.start()

    def offer(self, record: Pending) -> bool:
        """Queue ``record`` without waiting; False (counted as dropped) when the queue is full."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped.inc()
            return False
        return True

    def resize(self, *, max_bytes: int, keep: int, queue_size: int) -> None:
        """New limits from a reloaded policy; the file and the queued records stay."""
        self.max_bytes, self.keep = max_bytes, keep
        self._queue.maxsize = queue_size

    def stop(self) -> None:
        """No more records: the thread writes what is queued, then ends."""
        self._closed = True
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop and wait (off the loop, which keeps serving) until the queue is written, at most ``timeout_s``."""
        self.stop()
        await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():
            log.error("capture to %s: about %d records not written at shutdown", self.path, self._queue.qsize())

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            if records:
                self._write(records)
            if len(records) < len(batch) or (self._stopping.is_set() and self._queue.empty()):
                return

    def _write(self, records: list[Pending]) -> None:
        lines: list[bytes] = []
        errors = 0
        for record in records:
            try:
                lines.append(dumps(render(record)) + b"\n")
            except Exception as exc:  # a record that cannot be rendered must not stop the others
                errors += 1
                self._log_error("a record could not be written", exc)
        written, failure = self._append(lines)
        if failure is not None:
            errors += len(lines) - written
            self._log_error("writing failed", failure)
        self._report(written, errors)

    def _append(self, lines: list[bytes]) -> tuple[int, OSError | None]:
        """Append ``lines``, rotating before a line that would take the file past ``max_bytes``; how many lines
        were written, and the error that stopped the rest."""
        done, fd = 0, -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._open()
            size, start = os.fstat(fd).st_size, 0
            for index, line in enumerate(lines):
                if size and size + len(line) > self.max_bytes:
                    _write_all(fd, b"".join(lines[start:index]))
                    done = index
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd, size, start = self._open(), 0, index
                size += len(line)
            _write_all(fd, b"".join(lines[start:]))
            done = len(lines)
        except OSError as exc:
            return done, exc
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return done, None

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)

    def _rotate(self) -> None:
        path = self.path
        for index in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        if self.keep > 0:
            os.replace(path, path.with_name(f"{path.name}.1"))
        else:
            path.unlink()

    def _report(self, written: int, errors: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
            self._loop.call_soon_threadsafe(self._count, written, errors)

    def _count(self, written: int, errors: int) -> None:
        if written:
            self._written.inc(written)
        if errors:
            self._errors.inc(errors)

    def _log_error(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at < ERROR_LOG_EVERY_S:
            self._unlogged += 1
            return
        since = f" ({self._unlogged} more errors since the last report)" if self._unlogged else ""
        log.error("capture to %s: %s: %s%s; trying again with the next records", self.path, what, exc, since)
        self._logged_at, self._unlogged = now, 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
