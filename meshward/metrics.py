"""Prometheus metrics of `meshward serve`: one registry per server so tests can run several.

Label values that come from data (reasons, threat names) are bounded: past a fixed number of
distinct values they fold into "other", so a hostile input cannot grow memory without bound.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshward.log import event
from meshward.observation import Verdict

CONTENT_TYPE = CONTENT_TYPE_LATEST
_MAX_LABEL_VALUES = 200
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


def sample(exposition: str, line_start: str) -> float:
    """The value of the first sample line starting with `line_start` (0.0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def reason_label(reason: str) -> str:
    """The stable part of a reason ("unknown-path: GET /x" -> "unknown-path")."""
    return reason.split(":", 1)[0].split(" ", 1)[0].strip()


class Metrics:
    """All counters and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "meshward_checks", "ext_authz checks answered", ["result"], registry=r
        )
        self.verdicts = Counter(
            "meshward_verdicts",
            "engine verdicts by source, mode, verdict and reason",
            ["source", "mode", "verdict", "reason"],
            registry=r,
        )
        self.threats = Counter("meshward_threats", "threats found, by name", ["name"], registry=r)
        self.check_latency = Histogram(
            "meshward_check_seconds", "time to answer one ext_authz check", buckets=_LATENCY,
            registry=r,
        )
        self.evaluate_latency = Histogram(
            "meshward_evaluate_seconds", "engine time per observation", ["source"],
            buckets=_LATENCY, registry=r,
        )
        self.tap_streams = Counter(
            "meshward_tap_streams", "ext_proc tap streams by outcome", ["outcome"], registry=r
        )
        self.tap_active = Gauge("meshward_tap_streams_active", "open tap streams", registry=r)
        self.tap_stream_latency = Histogram(
            "meshward_tap_stream_seconds", "life time of one tap stream",
            buckets=(*_LATENCY, 5.0, 30.0), registry=r,
        )
        self.observations = Counter(
            "meshward_observations", "observations received, by source", ["source"], registry=r
        )
        self.drops = Counter(
            "meshward_drops", "inputs dropped, by where and why", ["where", "reason"], registry=r
        )
        self.errors = Counter(
            "meshward_errors", "handled errors, by where and kind", ["where", "kind"], registry=r
        )
        self.truncations = Counter(
            "meshward_body_truncations", "bodies seen only in part", ["source"], registry=r
        )
        self.joins = Counter(
            "meshward_exchange_joins", "both-ends joins by outcome", ["outcome"], registry=r
        )
        self.cache = Counter(
            "meshward_decision_cache", "ext_authz decision cache lookups", ["result"], registry=r
        )
        self._reasons = _Bounded()
        self._verdict_children: dict[tuple[str, str, str, str], Counter] = {}
        self._threat_names = _Bounded()

    def count_verdict(self, source: str, v: Verdict) -> None:
        """Count one verdict under each of its reasons (or "none") and its threats."""
        if not v.reasons:
            self._verdict_child(source, v.mode, v.verdict, "").inc()
        for reason in v.reasons:
            self._verdict_child(source, v.mode, v.verdict, reason).inc()
        for t in v.threats:
            self.threats.labels(self._threat_names(t.name)).inc()

    def _verdict_child(self, source: str, mode: str, verdict: str, reason: str) -> Counter:
        """The labelled counter, memoised: `labels()` costs microseconds on the hot path."""
        key = (source, mode, verdict, reason)
        child = self._verdict_children.get(key)
        if child is None:
            label = self._reasons(reason_label(reason))
            child = self.verdicts.labels(source, mode, verdict, label)
            if len(self._verdict_children) < 4096:
                self._verdict_children[key] = child
        return child

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Problems:
    """Counts handled errors and logs them, at most `per_second` log lines per kind."""

    def __init__(self, metrics: Metrics, logger: logging.Logger, per_second: int = 5) -> None:
        self.metrics = metrics
        self.logger = logger
        self.per_second = per_second
        self._window: dict[tuple[str, str], tuple[int, int]] = {}

    def __call__(self, where: str, kind: str, **fields: object) -> None:
        self.metrics.errors.labels(where, kind).inc()
        now = int(time.monotonic())
        key = (where, kind)
        second, count = self._window.get(key, (now, 0))
        if second != now:
            second, count = now, 0
        self._window[key] = (second, count + 1)
        if count < self.per_second:
            event(self.logger, f"{where}: {kind}", logging.WARNING, where=where, kind=kind,
                  **fields)
