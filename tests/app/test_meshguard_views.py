"""The mesh guard's views without a cluster: watch events in, findings out (what it found at
start, a namespace becoming guarded, pods kept small), and a replica that does not lead."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from meshward.app.meshguard import KINDS, PODS, MeshGuard, pod_state, slim_pod
from meshward.core.kubeaudit import Authors
from meshward.core.meshguard import Learned, Scope, State, diff
from meshward.core.threats.names import MESH_MTLS_WEAKENED, MESH_UNMESHED_POD
from meshward.kube.watch import Event, EventType
from tests.support.allowlists import allowlist_of
from tests.support.kubeaudit import fresh_event

PA = "peerauthentications.security.istio.io"


def ns(name: str, mode: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"meshward.io/mode": mode}}}


def pa(namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"mtls": {"mode": mode}},
    }


def found(g: MeshGuard) -> list[tuple[str, str, str, str]]:
    out = [(f.threat, f.name, f.old, f.new) for f, *_ in g._out]
    g._out.clear()
    return out


def test_found_at_start_then_a_namespace_becomes_guarded() -> None:
    g = MeshGuard(client.ApiClient())
    g.on_namespace(
        Event(EventType.SYNC, objects={("", "a"): ns("a", "enforce"), ("", "b"): ns("b", "learn")})
    )
    g.handler(PA)(
        Event(
            EventType.SYNC,
            objects={("a", "default"): pa("a", "PERMISSIVE"), ("b", "default"): pa("b", "DISABLE")},
        )
    )
    assert found(g) == [(MESH_MTLS_WEAKENED, "default", "(unknown: found at start)", "PERMISSIVE")]
    g.handler(PA)(
        Event(
            EventType.SYNC,
            objects={("a", "default"): pa("a", "PERMISSIVE"), ("b", "default"): pa("b", "DISABLE")},
        )
    )
    assert found(g) == []  # a relist repeats nothing
    g.on_namespace(Event(EventType.MODIFIED, object=ns("b", "monitor")))
    assert found(g) == [
        (MESH_MTLS_WEAKENED, "default", "(namespace not guarded before)", "DISABLE")
    ]
    g.on_namespace(Event(EventType.MODIFIED, object=ns("b", "learn")))
    assert found(g) == []  # no longer guarded: forgotten, not "cleared"
    # a STRICT policy in a namespace that stops being guarded is not "lost"
    g.handler(PA)(Event(EventType.MODIFIED, object=pa("a", "STRICT")))
    assert [(f[0], f[3]) for f in found(g)] == [(MESH_MTLS_WEAKENED, "STRICT")]  # cleared
    g.on_namespace(Event(EventType.MODIFIED, object=ns("a", "learn")))
    assert found(g) == []


def test_pods_are_kept_small_and_unmeshed_ones_found() -> None:
    g = MeshGuard(client.ApiClient())
    g.on_namespace(Event(EventType.SYNC, objects={("", "a"): ns("a", "enforce")}))
    big = {
        "metadata": {
            "name": "bare",
            "namespace": "a",
            "uid": "u",
            "labels": {"app": "x" * 1000},
            "annotations": {"note": "y" * 10000},
            "managedFields": [
                {
                    "manager": "deployer",
                    "operation": "Update",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsV1": {"f:spec": {"f:containers": {'k:{"name":"app"}': {"x": {}}}}},
                }
            ],
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "i", "env": [{"name": "E", "value": "v" * 5000}]}
            ]
        },
        "status": {"phase": "Running"},
    }
    assert len(str(slim_pod(big))) < 600
    g.handler(PODS)(Event(EventType.ADDED, object=big))
    [(f, reason, *_)] = list(g._out)
    assert (f.threat, f.field, f.new, reason) == (
        MESH_UNMESHED_POD,
        "spec.containers",
        "app",
        MESH_UNMESHED_POD,
    )
    assert f.by.startswith("deployer (Update")


def test_a_replica_that_does_not_lead_holds_then_drops() -> None:
    leading = threading.Event()
    g = MeshGuard(client.ApiClient(), leading=leading, hold=0.3)
    g.on_namespace(Event(EventType.SYNC, objects={("", "a"): ns("a", "enforce")}))
    g.handler(PA)(Event(EventType.ADDED, object=pa("a", "DISABLE")))
    thread = threading.Thread(target=g.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.1)
        assert len(g._out) == 1  # held, waiting for the Lease
        deadline = time.monotonic() + 5
        while g._out and time.monotonic() < deadline:
            g._wake.set()
            time.sleep(0.1)
        assert not g._out and g.counters.dropped["not-leader"] == 1
        assert g.counters.events == 0
    finally:
        g._stop.set()
        g._wake.set()
        thread.join(5)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
SPEC_KEYS = st.sampled_from(
    ["mtls", "portLevelMtls", "rules", "action", "configPatches", "ingress", "host",
     "trafficPolicy", "subsets", "accessPolicy", "requiredAuthenticationRefs", "identities",
     "selector", "workloadSelector", "targetRef", "podSelector", "parentRefs", "identityRefs"]
)  # fmt: skip


LEARNED = Learned(allowlist_of(("GET", "/a/{int}", {"a/web": 1}), destination="a/x"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.dictionaries(SPEC_KEYS, JSON, max_size=5), meta=JSON)
def test_any_object_shape_is_judged_without_error(spec: dict[str, Any], meta: Any) -> None:
    """A CRD's schema is the API server's to enforce (and 1.20 drops Istio's CEL rules): every
    rule takes whatever shape the watch hands it and answers, never raises."""
    plain = Scope(frozenset({"a"}), "istio-system")
    obj = {"metadata": {"name": "x", "namespace": "a", "managedFields": meta}, "spec": spec}
    # compared with a learned allowlist, the objects a policy refers to just as shapeless
    learned = dataclasses.replace(plain, learned=LEARNED, refs=lambda *_: {"spec": spec})
    for kind in KINDS:
        for scope in (plain, learned):
            state = kind.rule(obj, scope)
            diff(kind.kind, None, obj, State(), state)
            diff(kind.kind, obj, None, state, State())
    scope = plain
    pod_state({**obj, "spec": {"containers": spec.get("rules")}}, scope)
    slim_pod({**obj, "metadata": {**obj["metadata"], "annotations": {}}})


def test_a_finding_waits_for_its_audit_event_then_names_the_user() -> None:
    g = MeshGuard(client.ApiClient(), authors=Authors(), audit_wait=0.5)
    g.on_namespace(Event(EventType.SYNC, objects={("", "a"): ns("a", "enforce")}))
    g.handler(PA)(Event(EventType.SYNC, objects={}))
    g.handler(PA)(Event(EventType.ADDED, object=pa("a", "STRICT")))
    weak = pa("a", "PERMISSIVE")
    weak["metadata"]["resourceVersion"] = "288"
    g.handler(PA)(Event(EventType.MODIFIED, object=weak))
    later = pa("a", "DISABLE")
    later["metadata"]["resourceVersion"] = "289"
    g.handler(PA)(Event(EventType.MODIFIED, object=later))
    entries = list(g._out)
    assert len(entries) == 2
    ready, held = g._joined(entries)
    assert ready == [] and len(held) == 2  # no audit Event yet; the second waits behind the first
    ref = {"resource": "peerauthentications", "namespace": "a", "name": "default"}
    ref |= {"apiGroup": "security.istio.io"}
    g.add_audit([fresh_event(objectRef=ref, impersonatedUser=None)])  # resourceVersion 288
    ready, held = g._joined(held)
    assert [f.user for f, *_ in ready] == ["admin"] and len(held) == 1
    assert "matched by resourceVersion" in ready[0][0].message()
    time.sleep(0.6)  # past the wait: reported without a user, and said so
    ready, held = g._joined(held)
    assert held == [] and ready[0][0].user == ""
    assert "no audit Event of this change within 0.5 s" in ready[0][0].message()
    assert g.counters.audit["joined-resourceVersion"] == 1 and g.counters.audit["not-joined"] == 1
