"""The request path's metric series expose exactly what prometheus_client's own classes expose for the same updates."""

from __future__ import annotations

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from gateway.telemetry import series

BUCKETS = (0.001, 0.01, 0.1, 1, 10)
LABELS = st.sampled_from(["a", "b", "c"])
UPDATES = st.lists(st.tuples(LABELS, st.floats(min_value=0, max_value=100, allow_nan=False)), max_size=30)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(UPDATES)
def test_counter_gauge_and_histogram_expose_what_prometheus_client_does(updates: list[tuple[str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    made = [
        (
            series.Counter("x_requests_total", "Requests.", ["k"], registry=ours),
            prometheus_client.Counter("x_requests_total", "Requests.", ["k"], registry=theirs),
        ),
        (
            series.Gauge("x_level", "Level.", ["k"], registry=ours),
            prometheus_client.Gauge("x_level", "Level.", ["k"], registry=theirs),
        ),
        (
            series.Histogram("x_seconds", "Time.", ["k"], registry=ours, buckets=BUCKETS),
            prometheus_client.Histogram("x_seconds", "Time.", ["k"], registry=theirs, buckets=BUCKETS),
        ),
    ]
    (counter, their_counter), (gauge, their_gauge), (histogram, their_histogram) = made
    for label, value in updates:
        counter.labels(label).inc(value)
        their_counter.labels(label).inc(value)
        gauge.labels(label).set(value)
        their_gauge.labels(label).set(value)
        histogram.labels(label).observe(value)
        their_histogram.labels(label).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_series_have_one_child_and_wrong_label_counts_are_refused() -> None:
    registry = CollectorRegistry()
    inflight = series.Gauge("y_inflight", "In flight.", registry=registry).only
    inflight.inc()
    inflight.inc()
    inflight.dec()
    assert "y_inflight 1.0" in exposition(registry)
    counter = series.Counter("y_total", "Total.", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("1", "2").inc(-1)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        series.Counter("y_total", "Again.", ["a"], registry=registry)
