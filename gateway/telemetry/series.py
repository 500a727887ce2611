"""Counter, Gauge and Histogram for the request path: prometheus_client's exposition at a fraction of its cost.

prometheus_client checks label values, takes a lock and (for a histogram) walks the buckets in Python on every
update. The gateway makes about twenty updates per request, and in an in-process profile they were about an eighth
of its CPU. Every update here comes from the one event-loop thread (``/metrics`` is served by the same loop), so a
series child is a plain number, or a list of bucket counts found by ``bisect``, changed without a lock. A scrape
reads them through the registry as collector families, in prometheus_client's own text format (without the
``_created`` samples, which nothing here reads).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class Series(Collector, Generic[C]):
    """One metric family with a child per label-value tuple; unlabelled series have the one child ``()``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, values: list[str], child: C) -> None:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def clear(self) -> None:
        self._children.clear()

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    @property
    def only(self) -> C:
        """The child of an unlabelled series."""
        return self.labels()

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            self._add(family, list(values), child)
        yield family


class Counter(Series[CounterChild]):
    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: list[str], child: CounterChild) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(values, child.value)


class Gauge(Series[GaugeChild]):
    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: list[str], child: GaugeChild) -> None:
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(values, child.value)


class Histogram(Series[HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = [*sorted(float(b) for b in buckets if b != math.inf), math.inf]
        self._le: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: list[str], child: HistogramChild) -> None:
        assert isinstance(family, HistogramMetricFamily)
        cumulative, total = [], 0
        for le, count in zip(self._le, child.counts, strict=True):
            total += count
            cumulative.append((le, float(total)))
        family.add_metric(values, cumulative, child.sum)
