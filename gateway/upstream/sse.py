"""SseDecoder: server-sent events (the WHATWG ``text/event-stream`` framing) into the data of each event.

vLLM sends one ``data:`` line per event with ``\\n`` endings, but the framing allows more, and a backend behind a
proxy may use it: several ``data:`` lines in one event (joined with ``\\n``), ``\\r\\n`` or bare ``\\r`` line
endings, comment lines (``: ping``) and ``event:``/``id:``/``retry:`` fields, which the gateway ignores. An event
is complete at its blank line. ``max_event_bytes`` bounds the memory one unfinished line or event may take.
"""

from __future__ import annotations

from gateway.errors import UpstreamAnswerTooLarge


class SseDecoder:
    __slots__ = ("_data", "_max", "_pending", "_size")

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._pending = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that ``chunk`` completes, in order."""
        buffer = self._pending + chunk if self._pending else chunk
        held = b""
        if buffer.endswith(b"\r"):  # may be the first half of "\r\n": decide with the next chunk
            buffer, held = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop() + held
        if len(self._pending) > self._max:
            raise UpstreamAnswerTooLarge(f"a server-sent event line is over {self._max} bytes")
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
                    self._size = 0
            elif line.startswith(b"data"):
                self._field(line)
        return events

    def end(self) -> list[bytes]:
        """At the end of the stream: an event whose blank line never came is still delivered (lenient, as vLLM's
        own clients are)."""
        line, self._pending = self._pending.rstrip(b"\r"), b""
        if line.startswith(b"data"):
            self._field(line)
        data, self._data = self._data, []
        return [b"\n".join(data)] if data else []

    def _field(self, line: bytes) -> None:
        if line == b"data":
            value = b""
        elif line[4:5] == b":":
            value = line[6:] if line[5:6] == b" " else line[5:]
        else:
            return  # a field named e.g. "dataset": not ours
        self._size += len(value)
        if self._size > self._max:
            raise UpstreamAnswerTooLarge(f"a server-sent event is over {self._max} bytes")
        self._data.append(value)
