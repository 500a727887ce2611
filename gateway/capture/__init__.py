"""Traffic capture (docs/capture.md): sampled primary requests and shadow answers as JSONL records.

:mod:`~gateway.capture.record` is the record format, :mod:`~gateway.capture.redact` the ``content: redacted`` form,
:mod:`~gateway.capture.sink` the queued, rotating writer, :mod:`~gateway.capture.traffic` the gateway's set of them.
"""

from gateway.capture.record import Pending, render
from gateway.capture.redact import Redactor
from gateway.capture.sink import CaptureSink
from gateway.capture.traffic import TrafficCapture

__all__ = ["CaptureSink", "Pending", "Redactor", "TrafficCapture", "render"]
