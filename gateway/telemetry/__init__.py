"""Telemetry: Prometheus metrics and OpenTelemetry traces. Imports no pipeline stage."""
