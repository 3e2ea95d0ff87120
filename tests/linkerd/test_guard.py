"""The mesh guard's Linkerd rules, without a cluster."""

from __future__ import annotations

from typing import Any

from meshward.core.meshguard import Scope
from meshward.core.threats.names import MESH_INJECTION_DISABLED, MESH_POLICY_WIDENED
from meshward.linkerd import guard

SCOPE = Scope(frozenset({"shop", "lab"}), "istio-system", enforcing=frozenset({"shop"}))


def obj(ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "x", "namespace": ns}, "spec": spec}


def fields(state: Any) -> set[tuple[str, str]]:
    return {(w.threat, w.field) for w in state.weak}


def test_server_access_policy() -> None:
    for policy in ("all-unauthenticated", "cluster-unauthenticated", "audit"):
        state = guard.server(obj("shop", {"accessPolicy": policy, "port": 80}), SCOPE)
        assert fields(state) == {(MESH_POLICY_WIDENED, "spec.accessPolicy")}
    for policy in ("deny", "all-authenticated", ""):
        assert not guard.server(obj("shop", {"accessPolicy": policy}), SCOPE).weak
    assert not guard.server(obj("dev", {"accessPolicy": "audit"}), SCOPE).weak
    # audit in a monitor namespace is what meshward's own Linkerd export writes there
    assert not guard.server(obj("lab", {"accessPolicy": "audit"}), SCOPE).weak
    assert guard.server(obj("lab", {"accessPolicy": "all-unauthenticated"}), SCOPE).weak


def test_authorization_policy() -> None:
    none = obj(
        "shop", {"targetRef": {"kind": "Server", "name": "web"}, "requiredAuthenticationRefs": []}
    )
    assert fields(guard.authorization_policy(none, SCOPE)) == {
        (MESH_POLICY_WIDENED, "spec.requiredAuthenticationRefs")
    }
    network = obj(
        "shop",
        {
            "targetRef": {"kind": "Server", "name": "web"},
            "requiredAuthenticationRefs": [
                {"kind": "NetworkAuthentication", "name": "all", "group": "policy.linkerd.io"}
            ],
        },
    )
    assert fields(guard.authorization_policy(network, SCOPE)) == {
        (MESH_POLICY_WIDENED, "spec.requiredAuthenticationRefs[0]")
    }
    mtls = obj(
        "shop",
        {
            "targetRef": {"kind": "Server", "name": "web"},
            "requiredAuthenticationRefs": [
                {"kind": "MeshTLSAuthentication", "name": "web", "group": "policy.linkerd.io"}
            ],
        },
    )
    assert not guard.authorization_policy(mtls, SCOPE).weak


def test_meshtls_any_identity() -> None:
    assert fields(guard.meshtls_authentication(obj("shop", {"identities": ["*"]}), SCOPE))
    named = obj("shop", {"identities": ["web.shop.serviceaccount.identity.linkerd.cluster.local"]})
    assert not guard.meshtls_authentication(named, SCOPE).weak


def test_inject_annotations() -> None:
    ns = {"metadata": {"name": "shop", "annotations": {"linkerd.io/inject": "disabled"}}}
    assert fields(guard.namespace_injection(ns)) == {
        (MESH_INJECTION_DISABLED, "metadata.annotations[linkerd.io/inject]")
    }
    on = {"metadata": {"name": "shop", "annotations": {"linkerd.io/inject": "enabled"}}}
    assert guard.namespace_injection(on).strong
    assert guard.pod_injection({"metadata": {"annotations": {"linkerd.io/inject": "disabled"}}})


def test_skipped_inbound_ports() -> None:
    pod = {"metadata": {"annotations": {"config.linkerd.io/skip-inbound-ports": "8080,9090"}}}
    (w,) = guard.pod_injection(pod)
    assert (w.field, w.value) == (
        "metadata.annotations[config.linkerd.io/skip-inbound-ports]",
        "8080,9090",
    )
    ns = {
        "metadata": {"name": "shop", "annotations": {"config.linkerd.io/skip-inbound-ports": "25"}}
    }
    assert fields(guard.namespace_injection(ns)) == {
        (MESH_INJECTION_DISABLED, "metadata.annotations[config.linkerd.io/skip-inbound-ports]")
    }
