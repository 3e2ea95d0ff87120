"""Prometheus metrics of `meshward serve`: one registry per server so tests can run several.

Label values that come from data (reasons, threat names) are bounded: past a fixed number of
distinct values they fold into "other", so a hostile input cannot grow memory without bound.

The metrics are plain numbers that the event loop thread updates (every writer runs on it: the
gRPC handlers, the HTTP API, the flush task), read by a prometheus_client collector at scrape
time. prometheus_client's own metric objects take a lock for every update, and on the ext_authz
path five updates per Check cost about a tenth of its time.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshward.core import redact
from meshward.core.log import event
from meshward.core.observation import Verdict
from meshward.core.threats.names import THREAT_NAMES

CONTENT_TYPE = CONTENT_TYPE_LATEST
# one metric child's count, as `Metrics.counts` hands it over: (metric, label values, value or
# (bucket counts, sum))
Counted = tuple[str, tuple[str, ...], float | tuple[list[int], float]]
_MAX_LABEL_VALUES = 200
UNREGISTERED = "unregistered"  # the threat label of every name not in the registry
# latency buckets in seconds: 10 µs .. 1 s, the range a check or a tap stream lives in
_LATENCY = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 1.0)


class _Bounded:
    """Maps free-form label values to themselves until a limit, then to "other"."""

    def __init__(self, limit: int = _MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        value = value[:64] or "none"
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(value)
        return value


def threat_label(name: str) -> str:
    """A threat name as a label: only the registry's names (meshward.core.threats.names), any
    other one bucket, so forged names cannot fill the label space."""
    return name if name in THREAT_NAMES else UNREGISTERED


def reason_label(reason: str) -> str:
    """The stable part of a reason ("unknown-path: GET /x" -> "unknown-path")."""
    return reason.split(":", 1)[0].split(" ", 1)[0].strip()


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _GaugeChild(_CounterChild):
    __slots__ = ()

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket with le >= amount
        self.sum += amount


class _Family:
    """One metric: its children by label values (one child when it has no labels)."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind, self.name, self.doc, self.labelnames = kind, name, doc, labelnames
        self.bounds = (*buckets, float("inf"))
        self.children: dict[tuple[str, ...], _CounterChild | _GaugeChild | _HistogramChild] = {}
        if not labelnames:
            self._only = self.labels()

    def labels(self, *values: str) -> Any:  # a child: inc/dec/set/observe as its kind has them
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            if self.kind == "histogram":
                child = _HistogramChild(self.bounds)
            else:
                child = _GaugeChild() if self.kind == "gauge" else _CounterChild()
            self.children[values] = child
        return child

    # unlabelled metrics are used directly
    def inc(self, amount: float = 1.0) -> None:
        self._only.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only.dec(amount)

    def set(self, value: float) -> None:
        self._only.set(value)

    def observe(self, amount: float) -> None:
        self._only.observe(amount)

    def export(self) -> Metric:
        labels = list(self.labelnames)
        if self.kind == "counter":
            out: Metric = CounterMetricFamily(self.name, self.doc, labels=labels)
        elif self.kind == "gauge":
            out = GaugeMetricFamily(self.name, self.doc, labels=labels)
        else:
            out = HistogramMetricFamily(self.name, self.doc, labels=labels)
        for values, child in list(self.children.items()):
            if isinstance(child, _HistogramChild):
                running, buckets = 0, []
                for bound, n in zip(self.bounds, child.counts, strict=True):
                    running += n
                    buckets.append((floatToGoString(bound), running))
                out.add_metric(list(values), buckets, child.sum)  # type: ignore[attr-defined]
            else:
                out.add_metric(list(values), child.value)  # type: ignore[attr-defined]
        return out


class _Collector(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.export()


class Metrics:
    """All counters and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        families: list[_Family] = []

        def family(
            kind: str, name: str, doc: str, *labelnames: str, buckets: tuple[float, ...] = ()
        ) -> Any:
            families.append(_Family(kind, name, doc, labelnames, buckets))
            return families[-1]

        self.checks = family("counter", "meshward_checks", "ext_authz checks answered", "result")
        self.verdicts = family(
            "counter",
            "meshward_verdicts",
            "engine verdicts by source, mode, verdict and reason",
            "source",
            "mode",
            "verdict",
            "reason",
        )
        self.threats = family("counter", "meshward_threats", "threats found, by name", "name")
        self.check_latency = family(
            "histogram",
            "meshward_check_seconds",
            "time to answer one ext_authz check",
            buckets=_LATENCY,
        )
        self.evaluate_latency = family(
            "histogram",
            "meshward_evaluate_seconds",
            "engine time per observation",
            "source",
            buckets=_LATENCY,
        )
        self.tap_streams = family(
            "counter", "meshward_tap_streams", "ext_proc tap streams by outcome", "outcome"
        )
        self.tap_active = family("gauge", "meshward_tap_streams_active", "open tap streams")
        self.tap_stream_latency = family(
            "histogram",
            "meshward_tap_stream_seconds",
            "life time of one tap stream",
            buckets=(*_LATENCY, 5.0, 30.0),
        )
        self.observations = family(
            "counter", "meshward_observations", "observations received, by source", "source"
        )
        self.drops = family(
            "counter", "meshward_drops", "inputs dropped, by where and why", "where", "reason"
        )
        self.errors = family(
            "counter", "meshward_errors", "handled errors, by where and kind", "where", "kind"
        )
        self.truncations = family(
            "counter", "meshward_body_truncations", "bodies seen only in part", "source"
        )
        self.joins = family(
            "counter", "meshward_exchange_joins", "both-ends joins by outcome", "outcome"
        )
        self.cache = family(
            "counter", "meshward_decision_cache", "ext_authz decision cache lookups", "result"
        )
        self.callers_by_ip = family(
            "counter",
            "meshward_callers_by_ip",
            "node-tap sources known only by IP, by whether a pod held the IP",
            "outcome",
        )
        self.refused = family(
            "counter",
            "meshward_refused",
            "alerts and learning a quota or cap turned away, by which",
            "what",
        )
        self.alerts_evicted = family(
            "counter",
            "meshward_alerts_evicted",
            "stored alerts deleted to keep the history within its quotas, limit and retention",
            "by",
        )
        # counts kept elsewhere (the pure engine, the store), copied in at every scrape
        self._followed: list[tuple[Any, Callable[[], Mapping[str, int]]]] = []
        self._families = {f.name: f for f in families}
        self.registry.register(_Collector(families))
        self._reasons = _Bounded()
        self._verdict_children: dict[tuple[str, str, str, str], Any] = {}

    def count_verdict(self, source: str, v: Verdict) -> None:
        """Count one verdict under each of its reasons (or "none") and its threats."""
        if not v.reasons:
            self._verdict_child(source, v.mode, v.verdict, "").inc()
        for reason in v.reasons:
            self._verdict_child(source, v.mode, v.verdict, reason).inc()
        for t in v.threats:
            self.threats.labels(threat_label(t.name)).inc()

    def _verdict_child(self, source: str, mode: str, verdict: str, reason: str) -> Any:
        """The labelled counter, memoised (the reason label is folded first)."""
        key = (source, mode, verdict, reason)
        child = self._verdict_children.get(key)
        if child is None:
            label = self._reasons(reason_label(reason))
            child = self.verdicts.labels(source, mode, verdict, label)
            if len(self._verdict_children) < 4096:
                self._verdict_children[key] = child
        return child

    def counts(self) -> list[Counted]:
        """Every child that counted something: (metric, label values, value or (bucket counts,
        sum)), for another `Metrics` to `add` (an ingest batch judged in the worker process)."""
        out: list[Counted] = []
        for name, family in self._families.items():
            for values, child in family.children.items():
                if isinstance(child, _HistogramChild):
                    if any(child.counts):
                        out.append((name, values, (list(child.counts), child.sum)))
                elif child.value:
                    out.append((name, values, child.value))
        return out

    def add(self, counted: list[Counted]) -> None:
        """Another `Metrics`' `counts()` added to these; verdict reasons folded as
        `count_verdict` folds them (the bound on label values holds here)."""
        for name, values, value in counted:
            family = self._families.get(name)
            if family is None:
                continue
            if family is self.verdicts:
                child = self._verdict_child(*values)
            else:
                child = family.labels(*values)
            if isinstance(child, _HistogramChild):
                assert isinstance(value, tuple)
                counts, total = value
                for i, n in enumerate(counts[: len(child.counts)]):
                    child.counts[i] += n
                child.sum += total
            elif isinstance(value, int | float):
                child.inc(value)

    def follow(self, family: Any, read: Callable[[], Mapping[str, int]]) -> None:
        """Export `read()`, counts kept by their owner (the engine's refusals, kept by the pure
        core; the store's evictions, kept on the flusher's thread), as the one-label counter
        `family` at every scrape."""
        self._followed.append((family, read))

    def exposition(self) -> bytes:
        for family, read in self._followed:
            for label, n in list(read().items()):
                family.labels(label).value = float(n)
        return generate_latest(self.registry)


class Problems:
    """Counts handled errors and logs them, at most `per_second` log lines per kind (no
    counting without `metrics`: a caller that keeps its own counts, as the controller's port)."""

    def __init__(
        self, metrics: Metrics | None, logger: logging.Logger, per_second: int = 5
    ) -> None:
        self.metrics = metrics
        self.logger = logger
        self.per_second = per_second
        self._window: dict[tuple[str, str], tuple[int, int]] = {}

    def __call__(self, where: str, kind: str, **fields: object) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(where, kind).inc()
        now = int(time.monotonic())
        key = (where, kind)
        second, count = self._window.get(key, (now, 0))
        if second != now:
            second, count = now, 0
        self._window[key] = (second, count + 1)
        if count < self.per_second:  # what a caller sent may be in an error: logged redacted
            fields = {k: redact.text(v) if isinstance(v, str) else v for k, v in fields.items()}
            event(
                self.logger, f"{where}: {kind}", logging.WARNING, where=where, kind=kind, **fields
            )
