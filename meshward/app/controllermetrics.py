"""`meshward controller`'s metrics port: Prometheus `/metrics` and the liveness probe `/healthz`.

The numbers are the controller's own (its `Counters`, its views of namespaces and managed
objects, the elector's `leading` Event), read by a prometheus_client collector at scrape time,
as serve's metrics are: nothing is counted twice. `/metrics` is guarded exactly as serve's is in
a cluster (`meshward.app.auth.Guard` over `meshward.app.kubeauth.KubeAuth`): a Kubernetes token
(TokenReview, audience `meshward`) allowed `get metrics.meshward.io` (SubjectAccessReview; the
install's `meshward-metrics-reader` ClusterRole grants it), unless `public_metrics`. `/healthz`
is open, as every probe is.

The controller's loop is threads (watches, elector, reconcile), so the port runs a small aiohttp
app on an event loop of its own, in a daemon thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshward.app.auth import AuthConfig, Guard
from meshward.app.controller import KINDS, Controller
from meshward.app.install import CONTROLLER_METRICS_PORT
from meshward.app.kubeauth import KubeAuth
from meshward.app.meshguard import MeshGuard
from meshward.app.threadedsite import ThreadedSite
from meshward.core.log import event
from meshward.core.meshguard import CONFIG_THREATS
from meshward.kube.review import Reviewer
from meshward.runtime.metrics import CONTENT_TYPE, Problems

log = logging.getLogger("meshward.controller")
PREFIX = "meshward_controller"


class ControllerCollector(Collector):
    """The controller's state as metrics, read when Prometheus scrapes."""

    def __init__(
        self, ctl: Controller, leading: threading.Event | None, guard: Guard | None = None
    ) -> None:
        self.ctl, self.leading, self.guard = ctl, leading, guard

    def collect(self) -> Iterator[Metric]:
        c = self.ctl.counters
        for name, doc, value in (
            ("passes", "reconcile passes run", c.passes),
            ("applied", "objects applied (server-side apply)", c.applied),
            ("pruned", "managed objects removed", c.pruned),
            ("errors", "reconcile passes that failed (retried with a backoff)", c.errors),
            ("events", "Events recorded on Namespaces", c.events),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        leader = 1.0 if self.leading is None or self.leading.is_set() else 0.0
        yield GaugeMetricFamily(
            f"{PREFIX}_leader", "1 while this replica holds the Lease (only it writes)", leader
        )
        namespaces, live = self.ctl.watched()
        yield GaugeMetricFamily(f"{PREFIX}_namespaces", "namespaces watched", value=namespaces)
        managed = GaugeMetricFamily(
            f"{PREFIX}_managed_objects", "meshward-managed objects seen, by kind", labels=["kind"]
        )
        for kind in KINDS:
            managed.add_metric([kind], live.get(kind, 0))
        yield managed
        yield GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time the last reconcile pass succeeded (0: none yet)",
            value=self.ctl.last_success,
        )
        guard = self.ctl.guard
        if guard is not None:
            yield from guard_metrics(guard)
        if self.guard is not None:
            refused = CounterMetricFamily(
                f"{PREFIX}_http_refused", "metrics port calls refused, by why", labels=["why"]
            )
            refused.add_metric(["unauthenticated"], self.guard.failures)
            refused.add_metric(["forbidden"], self.guard.denials)
            yield refused


def guard_metrics(guard: MeshGuard) -> Iterator[Metric]:
    """The mesh guard's findings by threat, its reports and its drops."""
    c = guard.counters
    findings = CounterMetricFamily(
        f"{PREFIX}_guard_findings",
        "mesh guard findings reported (Warning Events), by threat",
        labels=["threat"],
    )
    cleared = CounterMetricFamily(
        f"{PREFIX}_guard_cleared",
        "mesh guard findings undone (Normal Events: Cleared, Restored), by threat",
        labels=["threat"],
    )
    for threat in CONFIG_THREATS:
        findings.add_metric([threat], c.findings.get(threat, 0))
        cleared.add_metric([threat], c.cleared.get(threat, 0))
    yield findings
    yield cleared
    for name, doc, value in (
        ("guard_restored", "meshward objects put back after someone else changed them", c.restored),
        ("guard_events", "mesh guard Events recorded", c.events),
        ("guard_event_errors", "mesh guard Events the API refused (logged)", c.event_errors),
        ("guard_alerts_sent", "mesh guard findings sent to serve as alerts", c.alerts_sent),
        ("guard_alert_failures", "sends of findings to serve that failed", c.alerts_failed),
        ("guard_suppressed", "findings not repeated (already reported)", guard.reported.suppressed),
        (
            "guard_learned_reads",
            "reads of serve's learned allowlists",
            guard.learned.counters.reads,
        ),
        (
            "guard_learned_failures",
            "reads of serve's learned allowlists that failed (logged)",
            guard.learned.counters.failures,
        ),
    ):
        yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
    audit = CounterMetricFamily(
        f"{PREFIX}_guard_audit",
        "API server audit Events (kept, skipped-WHY) and findings joined with one "
        "(joined-resourceVersion, joined-time) or not (not-joined), by outcome",
        labels=["outcome"],
    )
    for outcome, n in sorted(c.audit.items()):
        audit.add_metric([outcome], n)
    yield audit
    age = guard.learned.age()
    yield GaugeMetricFamily(
        f"{PREFIX}_guard_learned_age_seconds",
        "age of the learned allowlists ALLOW policies are compared with (-1: none, the "
        "comparison is off)",
        value=-1.0 if age is None else age,
    )
    dropped = CounterMetricFamily(
        f"{PREFIX}_guard_dropped", "mesh guard findings or objects dropped, by why", labels=["why"]
    )
    for why, n in sorted(c.dropped.items()):
        dropped.add_metric([why], n)
    yield dropped
    objects = GaugeMetricFamily(
        f"{PREFIX}_guard_objects",
        "objects the mesh guard follows, by resource",
        labels=["resource"],
    )
    for resource, n in sorted(guard.watched().items()):
        objects.add_metric([resource], n)
    yield objects


def kubernetes_guard(api_client: Any, public_metrics: bool) -> Guard:
    """serve's cluster guard (TokenReview + SubjectAccessReview, cached), reviewing with the
    controller's own identity."""
    checks = KubeAuth(Reviewer(api_client, AuthConfig().audiences))
    # refusals: counted by the guard (meshward_controller_http_refused_total), logged at most a
    # few lines a second, so a flood of bad tokens cannot flood the log
    return Guard(
        checks, public_metrics=public_metrics, authorizer=checks, report=Problems(None, log)
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


class MetricsPort(ThreadedSite):
    """The HTTP port in a thread of its own: `start()` binds (port 0: any free one, then read
    `port`), `stop()` closes it."""

    name = "metrics"

    def __init__(
        self,
        ctl: Controller,
        guard: Guard,
        leading: threading.Event | None = None,
        host: str = "0.0.0.0",
        port: int = CONTROLLER_METRICS_PORT,
    ) -> None:
        super().__init__(host, port)
        self.guard = guard
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(ctl, leading, guard))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def app(self) -> web.Application:
        app = web.Application()
        app.middlewares.append(self.guard.middleware)  # /healthz open, /metrics guarded
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    def start(self) -> None:
        super().start()
        event(
            log,
            "metrics port",
            host=self.host,
            port=self.port,
            public_metrics=self.guard.public_metrics,
        )
