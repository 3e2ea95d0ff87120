"""Kubernetes Events for the alerts that matter, rate-limited: `kubectl get events -n shop`
shows an attack or a blocked request without a dashboard.

Which alerts: a request **denied** (enforce; reason `RequestDenied`), an **embedded threat**
found in any mode (`ThreatDetected`, the threat names in the message), and a request the
detectors **failed** to inspect (`InspectionFailed`). Plain deviations in monitor mode (an
unknown path, a new caller) are the alert history's, not Events: they are many while a service
changes.

Rate: at most one Event per (namespace, destination, reason) every `every` seconds (60) per
replica; the alerts of that key in between are counted into the next Event's message; at most
`per_call` Events per flush (10), the rest wait for a later one. An Event is a Warning on the
destination's Namespace (it always exists; the Allowlist object may not). Evidence is never
put in an Event (Events are readable by more people than alerts): the reason, the method and
path template, the threat names and counts only. Creating one is best effort: a failure is
logged and dropped.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from kubernetes import client

from meshward.core.log import event
from meshward.core.names import is_kubernetes_name
from meshward.core.reasons import INSPECTION_FAILED
from meshward.kube.errors import describe

log = logging.getLogger("meshward.app.alertevents")

COMPONENT = "meshward-serve"
MAX_KEYS = 10_000  # rate-limit entries kept (oldest dropped)

Key = tuple[str, str, str]  # namespace, destination, reason


def reason_of(alert: dict[str, Any]) -> str | None:
    """The Event reason of an alert that matters, None for the others (a mesh guard finding
    has its Event already, on the changed object, from the controller)."""
    if alert.get("seen_by") == "mesh-guard":
        return None
    if alert.get("verdict") == "deny":
        return "RequestDenied"
    if alert.get("threats"):
        return "ThreatDetected"
    if INSPECTION_FAILED in (alert.get("reasons") or []):
        return "InspectionFailed"
    return None


class AlertEvents:
    """Turns alerts into rate-limited Events (called on the store's writer thread)."""

    def __init__(
        self,
        api: client.ApiClient,
        replica: str,
        fallback_namespace: str = "meshward",
        every: float = 60.0,
        per_call: int = 10,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.replica = replica
        self.fallback_namespace = fallback_namespace
        self.every = every
        self.per_call = per_call
        self.created = 0
        self.suppressed = 0  # alerts folded into a later Event's count
        self._last: dict[Key, float] = {}  # when the key's last Event was made
        self._waiting: dict[Key, tuple[int, dict[str, Any]]] = {}  # count, newest alert

    def record(self, alerts: list[dict[str, Any]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for a in alerts:
            reason = reason_of(a)
            if reason is None:
                continue
            key = (self._namespace(a), str(a.get("destination") or "unknown"), reason)
            n, _ = self._waiting.pop(key, (0, a))
            self._waiting[key] = (n + 1, a)  # re-inserted: newest last
        made = 0
        for key in list(self._waiting):
            if made >= self.per_call:
                break
            if now - self._last.get(key, -self.every) < self.every:
                continue
            n, newest = self._waiting.pop(key)
            self._last[key] = now
            if len(self._last) > MAX_KEYS:
                del self._last[next(iter(self._last))]
            self.suppressed += n - 1
            self._create(key, n, newest)
            made += 1
        while len(self._waiting) > MAX_KEYS:
            del self._waiting[next(iter(self._waiting))]

    def _namespace(self, alert: dict[str, Any]) -> str:
        ns = alert.get("namespace")
        return ns if isinstance(ns, str) and is_kubernetes_name(ns) else self.fallback_namespace

    def _create(self, key: Key, count: int, alert: dict[str, Any]) -> None:
        ns, dest, reason = key
        threats = sorted({str(t.get("name")) for t in alert.get("threats") or [] if t})
        what = _printable(f"{alert.get('method') or ''} {alert.get('rule') or alert.get('path')}")
        message = (
            f"{count} alert(s) for {dest} from {_printable(str(alert.get('source')))}: "
            f"{alert.get('verdict')} {what.strip()[:200]} in {alert.get('mode')} mode"
        )
        if threats:
            message += f"; threats: {', '.join(threats)[:300]}"
        reasons = [r for r in alert.get("reasons") or [] if isinstance(r, str)]
        if reasons:
            message += f"; reasons: {', '.join(reasons)[:200]}"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Any = {
            "metadata": {"generateName": "meshward-alert-", "namespace": ns},
            # the API requires an Event's involved object in the Event's namespace, the
            # Namespace object itself included
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Namespace",
                "name": ns,
                "namespace": ns,
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1000],
            "source": {"component": COMPONENT},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": count,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.replica,
        }
        try:
            self._core.create_namespaced_event(ns, body, _request_timeout=(5, 10))
            self.created += 1
        except Exception as exc:  # best effort: alerts are stored whatever happens here
            event(
                log,
                "alert event not recorded",
                logging.WARNING,
                namespace=ns,
                reason=reason,
                error=describe(exc)[:200],
            )


def _printable(text: str, most: int = 200) -> str:
    """Printable ASCII only, cut: the path is the client's, the Event a person reads."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:most])
