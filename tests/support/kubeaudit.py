"""Audit Events as kube-apiserver v1.20 posts them to its audit webhook (one taken from a real
run), for the tests of the mesh guard's audit side."""

from __future__ import annotations

import datetime
from typing import Any

T0 = "2026-12-06T10:14:06.991840Z"


def audit_event(**over: Any) -> dict[str, Any]:
    """A write as kube-apiserver v1.20 logs it at RequestResponse level (taken from one)."""
    doc: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": "9e5c4c1d-38e4-464f-b5b6-09bd0b1535f8",
        "stage": "ResponseComplete",
        "requestURI": "/apis/security.istio.io/v1/namespaces/x/peerauthentications/d"
        "?fieldManager=kubectl-patch",
        "verb": "patch",
        "user": {
            "username": "admin",
            "uid": "uid-admin",
            "groups": ["system:masters", "system:authenticated"],
        },
        "impersonatedUser": {"username": "carol", "groups": ["system:authenticated"]},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",
        "objectRef": {
            "resource": "peerauthentications",
            "namespace": "x",
            "name": "d",
            "apiGroup": "security.istio.io",
            "apiVersion": "v1",
        },
        "responseStatus": {"metadata": {}, "code": 200},
        "responseObject": {"kind": "PeerAuthentication", "metadata": {"resourceVersion": "288"}},
        "requestReceivedTimestamp": "2026-12-06T10:14:06.987000Z",
        "stageTimestamp": T0,
    }
    doc.update(over)
    return doc


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fresh_event(**over: Any) -> dict[str, Any]:
    """`audit_event` written now (a record older than the retention is forgotten at once)."""
    now = now_rfc3339()
    return audit_event(**{"requestReceivedTimestamp": now, "stageTimestamp": now, **over})
