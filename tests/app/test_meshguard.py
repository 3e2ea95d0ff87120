"""The configuration guard on a real kube-apiserver (v1.20) with Istio's and Linkerd's CRDs, and a
real serve: each weakening change gives a Warning Event on the changed object (reason = the
threat, the manager that made it in the message) and an alert in serve within seconds; a change
back gives a Normal Event; meshward's own EnvoyFilter edited or deleted is reported and put back;
benign changes (narrowing rules, meshward's own applies, a learn namespace) raise nothing.

The controller runs under the install's own ClusterRole (read-only on the mesh's objects) and
sends its findings with a ServiceAccount token (audience meshward) that serve checks by
TokenReview and SubjectAccessReview: a viewer's token may read the alerts but not post findings.
Each change is made by the Python client with its own field manager, as the API records it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry, generate_latest

from meshward.app.controllermetrics import ControllerCollector
from meshward.app.exports import export
from meshward.core.threats.names import (
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_MTLS_WEAKENED,
    MESH_POLICY_WIDENED,
    MESH_UNMESHED_POD,
)
from meshward.istio.envoyfilter import render
from meshward.kube.watch import wait_for
from meshward.runtime.client import ApiClient, ApiError
from tests.support.allowlists import allowlist_of
from tests.support.apiserver import KubeCluster
from tests.support.meshguard import TYPES, WITHIN, Guarded, guarded_env, latency_summary
from tests.support.metrics import sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guarded(kube_cluster: KubeCluster, mesh_crds: None) -> Iterator[Guarded]:
    with guarded_env(kube_cluster) as env:
        yield env
    if env.latency:
        print(f"\nmesh guard: {latency_summary(env.latency)}")


def test_mtls_weakened_and_cleared(guarded: Guarded) -> None:
    g = guarded
    ns = g.namespace()
    g.apply("PeerAuthentication", ns, "default", {"mtls": {"mode": "STRICT"}}, "alice")
    g.quiet(ns, "default")  # STRICT: benign
    g.expect(
        "PeerAuthentication PERMISSIVE",
        ns,
        "default",
        MESH_MTLS_WEAKENED,
        "mallory",
        lambda: g.apply(
            "PeerAuthentication", ns, "default", {"mtls": {"mode": "PERMISSIVE"}}, "mallory"
        ),
        "spec.mtls.mode: STRICT -> PERMISSIVE",
    )
    g.apply("PeerAuthentication", ns, "default", {"mtls": {"mode": "STRICT"}}, "alice")
    g.normal(ns, "default", "Cleared")
    spec = {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}
    g.expect(
        "PeerAuthentication port DISABLE",
        ns,
        "default",
        MESH_MTLS_WEAKENED,
        "eve",
        lambda: g.apply("PeerAuthentication", ns, "default", spec, "eve"),
        "spec.portLevelMtls[8080].mode",
    )
    # mesh-wide, from the root namespace: one finding naming every watched namespace
    g.expect(
        "mesh-wide PeerAuthentication",
        g.root,
        "mesh",
        MESH_MTLS_WEAKENED,
        "root-admin",
        lambda: g.apply(
            "PeerAuthentication", g.root, "mesh", {"mtls": {"mode": "DISABLE"}}, "root-admin"
        ),
        "affects namespaces",
    )
    # a DestinationRule anywhere that turns TLS off toward a watched service
    other = g.namespace(mode="learn")
    dr = {"host": f"reviews.{ns}.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
    g.expect(
        "DestinationRule tls DISABLE",
        other,
        "to-reviews",
        MESH_MTLS_WEAKENED,
        "dr-writer",
        lambda: g.apply("DestinationRule", other, "to-reviews", dr, "dr-writer"),
        "spec.trafficPolicy.tls.mode",
    )
    assert {a["namespace"] for a in g.alerts("to-reviews")} == {ns}  # the namespace it weakens
    # toward an outside host: nothing
    g.apply("DestinationRule", other, "to-api", {**dr, "host": "api.example.com"}, "dr-writer")
    g.quiet(other, "to-api")
    # the controller's metrics count them by threat
    registry = CollectorRegistry()
    registry.register(ControllerCollector(g.ctl, None))
    text = generate_latest(registry).decode()
    name = "meshward_controller_guard_findings_total"
    assert sample(text, f'{name}{{threat="{MESH_MTLS_WEAKENED}"}}') >= 4
    assert sample(text, 'meshward_controller_guard_cleared_total{threat="Mesh.MTLS.Weakened"}') >= 1


def test_policy_wider_than_learned(guarded: Guarded) -> None:
    """The controller reads serve's allowlists with its own token (the install's `list
    allowlists`): the exported allowlist applied as a policy is quiet; the same policy
    allowing a principal that never called is Mesh.Policy.Widened, Event and alert."""
    g = guarded
    ns = g.namespace(mode="monitor")
    web = {f"{ns}/web": 3}
    allowlist = allowlist_of(
        ("GET", "/items/{int}", web), ("POST", "/orders", web), destination=f"{ns}/cart"
    )
    g.call(lambda: g.serve.engine.allowlist.import_doc(allowlist.export_doc()))

    def read() -> bool:
        copy_ = g.guard.learned.current().allowlist
        return copy_ is not None and copy_.get(f"{ns}/cart") is not None

    assert wait_for(read, WITHIN), g.guard.learned.current().not_compared()
    (exported,) = export(allowlist, lambda _: "monitor", "authorizationpolicy").objects
    g.apply("AuthorizationPolicy", ns, "cart", exported["spec"], "alice")
    g.quiet(ns, "cart")  # equal to the learned allowlist
    wider = copy.deepcopy(exported["spec"])
    intruder = f"cluster.local/ns/{ns}/sa/intruder"
    wider["rules"][0]["from"][0]["source"]["principals"].append(intruder)
    g.expect(
        "AuthorizationPolicy wider than learned",
        ns,
        "cart",
        MESH_POLICY_WIDENED,
        "mallory",
        lambda: g.apply("AuthorizationPolicy", ns, "cart", wider, "mallory"),
        f"allows principal {intruder}, never seen calling {ns}/cart",
    )
    registry = CollectorRegistry()
    registry.register(ControllerCollector(g.ctl, None))
    text = generate_latest(registry).decode()
    assert sample(text, "meshward_controller_guard_learned_reads_total") >= 1
    assert 0 <= sample(text, "meshward_controller_guard_learned_age_seconds") < WITHIN


def test_policy_widened(guarded: Guarded) -> None:
    g = guarded
    ns = g.namespace(mode="monitor")
    narrow = {
        "rules": [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/web"]}}],
                "to": [{"operation": {"paths": ["/api/orders"], "methods": ["GET"]}}],
            }
        ]
    }
    g.apply("AuthorizationPolicy", ns, "orders", narrow, "alice")
    g.quiet(ns, "orders")  # a new narrowing rule: benign
    g.expect(
        "AuthorizationPolicy allow-all",
        ns,
        "orders",
        MESH_POLICY_WIDENED,
        "mallory",
        lambda: g.apply("AuthorizationPolicy", ns, "orders", {"rules": [{}]}, "mallory"),
        "spec.rules[0]",
    )
    # meshward's label on someone else's policy hides nothing: only the controller's own
    # objects (its desired set) are left to its reconcile
    disguised = {"app.kubernetes.io/managed-by": "meshward"}
    g.expect(
        "allow-all AuthorizationPolicy wearing meshward's label",
        ns,
        "disguised",
        MESH_POLICY_WIDENED,
        "mallory",
        lambda: g.apply(
            "AuthorizationPolicy", ns, "disguised", {"rules": [{}]}, "mallory", disguised
        ),
        "spec.rules[0]",
    )
    g.apply(
        "AuthorizationPolicy",
        ns,
        "deny-admin",
        {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
        "alice",
    )
    g.quiet(ns, "deny-admin")
    g.expect(
        "DENY AuthorizationPolicy deleted",
        ns,
        "deny-admin",
        MESH_POLICY_WIDENED,
        "unknown",  # the API names nobody for a deletion
        lambda: g.delete("AuthorizationPolicy", ns, "deny-admin"),
        "spec.action: DENY -> (deleted)",
    )
    # Linkerd: a Server open to unauthenticated callers, a policy without authentication,
    # a MeshTLSAuthentication for any identity
    server = {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080}
    g.apply("Server", ns, "web", {**server, "accessPolicy": "deny"}, "alice")
    g.quiet(ns, "web")
    g.expect(
        "Linkerd Server all-unauthenticated",
        ns,
        "web",
        MESH_POLICY_WIDENED,
        "lk-op",
        lambda: g.apply(
            "Server", ns, "web", {**server, "accessPolicy": "all-unauthenticated"}, "lk-op"
        ),
        "spec.accessPolicy: deny -> all-unauthenticated",
    )
    target = {"group": "policy.linkerd.io", "kind": "Server", "name": "web"}
    g.expect(
        "Linkerd AuthorizationPolicy without authentication",
        ns,
        "web-any",
        MESH_POLICY_WIDENED,
        "lk-op",
        lambda: g.apply(
            "LinkerdAuthorizationPolicy",
            ns,
            "web-any",
            {"targetRef": target, "requiredAuthenticationRefs": []},
            "lk-op",
        ),
        "spec.requiredAuthenticationRefs",
    )
    g.expect(
        "MeshTLSAuthentication any identity",
        ns,
        "anyone",
        MESH_POLICY_WIDENED,
        "lk-op",
        lambda: g.apply("MeshTLSAuthentication", ns, "anyone", {"identities": ["*"]}, "lk-op"),
        "spec.identities",
    )


def test_own_filter_tampered_is_restored_and_reported(guarded: Guarded) -> None:
    g = guarded
    ns = g.namespace(**{"istio-injection": "enabled"})
    want = render(ns, "enforce")["objects"][0]["spec"]

    def ours() -> dict[str, Any]:
        group, version, plural = TYPES["EnvoyFilter"]
        return dict(g.custom.get_namespaced_custom_object(group, version, ns, plural, "meshward"))

    def restored() -> bool:
        try:
            return ours()["spec"] == want
        except client.ApiException:
            return False

    assert wait_for(restored, WITHIN)
    g.quiet(ns, "meshward")  # meshward's own apply: benign
    before = g.ctl.guard.counters.restored if g.ctl.guard else 0

    def edit() -> None:
        group, version, plural = TYPES["EnvoyFilter"]
        g.custom.patch_namespaced_custom_object(
            group,
            version,
            ns,
            plural,
            "meshward",
            {"spec": {"configPatches": []}},
            field_manager="mallory-edit",
            _content_type="application/merge-patch+json",
        )

    g.expect("own EnvoyFilter edited", ns, "meshward", MESH_FILTER_TAMPERED, "mallory-edit", edit)
    assert wait_for(restored, WITHIN)
    g.normal(ns, "meshward", "Restored")
    g.expect(
        "own EnvoyFilter deleted",
        ns,
        "meshward",
        MESH_FILTER_TAMPERED,
        "unknown",
        lambda: g.delete("EnvoyFilter", ns, "meshward"),
        "deleted",
    )
    assert wait_for(restored, WITHIN)
    assert g.guard.counters.restored >= before + 2
    # the mode label changed: meshward re-renders its own filter, which is no tampering
    tampered = len([e for e in g.events(ns, "meshward") if e.type == "Warning"])
    g.core.patch_namespace(
        ns,
        {"metadata": {"labels": {"meshward.io/mode": "monitor"}}},
        _content_type="application/merge-patch+json",
    )
    want = render(ns, "monitor")["objects"][0]["spec"]
    assert wait_for(restored, WITHIN)
    time.sleep(1.0)
    assert len([e for e in g.events(ns, "meshward") if e.type == "Warning"]) == tampered
    # another EnvoyFilter that removes ext_authz from the inbound listeners
    remove = {
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": "SIDECAR_INBOUND",
                    "listener": {
                        "filterChain": {
                            "filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.ext_authz"},
                            }
                        }
                    },
                },
                "patch": {"operation": "REMOVE"},
            }
        ]
    }
    g.expect(
        "foreign EnvoyFilter removes ext_authz",
        ns,
        "no-authz",
        MESH_FILTER_TAMPERED,
        "eve",
        lambda: g.apply("EnvoyFilter", ns, "no-authz", remove, "eve"),
        "REMOVE HTTP_FILTER envoy.filters.http.ext_authz",
    )


def test_injection_disabled_and_unmeshed_pods(guarded: Guarded) -> None:
    g = guarded
    ns = g.namespace(**{"istio-injection": "enabled"})

    def label(value: str, manager: str) -> None:
        g.core.patch_namespace(
            ns,
            {"metadata": {"labels": {"istio-injection": value}}},
            field_manager=manager,
            _content_type="application/merge-patch+json",
        )

    g.expect(
        "namespace injection disabled",
        ns,
        ns,
        MESH_INJECTION_DISABLED,
        "ns-admin",
        lambda: label("disabled", "ns-admin"),
        "metadata.labels[istio-injection]: enabled -> disabled",
    )
    label("enabled", "ns-admin")
    g.normal(ns, ns, "Cleared")
    g.expect(
        "Linkerd inject disabled",
        ns,
        ns,
        MESH_INJECTION_DISABLED,
        "lk-admin",
        lambda: g.core.patch_namespace(
            ns,
            {"metadata": {"annotations": {"linkerd.io/inject": "disabled"}}},
            field_manager="lk-admin",
            _content_type="application/merge-patch+json",
        ),
        "linkerd.io/inject",
    )

    def run_pod(name: str, containers: list[str], **annotations: str) -> None:
        body = {
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": c, "image": "example/c:1"} for c in containers],
            },
        }
        g.core.create_namespaced_pod(ns, body, field_manager="deployer")
        g.core.patch_namespaced_pod_status(
            name, ns, {"status": {"phase": "Running"}}, field_manager="kubelet"
        )

    run_pod("meshed", ["app", "istio-proxy"])
    g.quiet(ns, "meshed")
    g.expect(
        "pod without a sidecar",
        ns,
        "bare",
        MESH_UNMESHED_POD,
        "deployer",
        lambda: run_pod("bare", ["app"]),
        "spec.containers",
    )
    excluded = {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"}
    g.expect(
        "a port left out of the sidecar",
        ns,
        "around",
        MESH_INJECTION_DISABLED,
        "deployer",
        lambda: run_pod("around", ["app", "istio-proxy"], **excluded),
        "excludeInboundPorts]: (unset) -> 8080",
    )


def test_learn_namespace_is_not_guarded_until_monitor(guarded: Guarded) -> None:
    g = guarded
    ns = g.namespace(mode="learn")
    g.apply("PeerAuthentication", ns, "default", {"mtls": {"mode": "DISABLE"}}, "alice")
    g.quiet(ns, "default")
    g.expect(
        "learn namespace switched to monitor",
        ns,
        "default",
        MESH_MTLS_WEAKENED,
        "alice",
        lambda: g.core.patch_namespace(
            ns,
            {"metadata": {"labels": {"meshward.io/mode": "monitor"}}},
            _content_type="application/merge-patch+json",
        ),
        "(namespace not guarded before) -> DISABLE",
    )


def test_findings_route_is_the_controllers_only(guarded: Guarded) -> None:
    g = guarded
    finding = {
        "threat": MESH_MTLS_WEAKENED,
        "kind": "PeerAuthentication",
        "namespace": "x",
        "name": "y",
        "field": "spec.mtls.mode",
        "old": "STRICT",
        "new": "DISABLE",
        "by": "forger",
    }
    with pytest.raises(ApiError) as refused:
        ApiClient(g.url, g.viewer_token).post_findings([finding])
    assert refused.value.status == 403
    with pytest.raises(ApiError) as anonymous:
        ApiClient(g.url).post_findings([finding])
    assert anonymous.value.status == 401
    bad = [{**finding, "threat": "SQL.Injection"}, {**finding, "new": "a\x00"}, "x"]
    answer = ApiClient(g.url, g.findings_token).post_findings(bad)
    assert answer == {"accepted": 0, "rejected": 3}
