"""meshward.app.nodeagent.mesh_of / principal: whose proxy a pod runs and how its mesh names it,
from Pod objects alone (Istio's native sidecar included, which the 1.20 test server's Pod
schema cannot hold)."""

from __future__ import annotations

from typing import Any

from meshward.app.nodeagent import mesh_of, principal
from meshward.linkerd.pods import identity


def pod(
    containers: list[str],
    annotations: dict[str, str] | None = None,
    init: list[dict[str, Any]] | None = None,
) -> dict:
    return {
        "metadata": {"name": "api-1", "namespace": "shop", "annotations": annotations or {}},
        "spec": {
            "serviceAccountName": "api",
            "containers": [{"name": c} for c in containers],
            "initContainers": init or [],
        },
        "status": {"phase": "Running", "podIP": "10.1.0.7"},
    }


def test_istio_pods_are_found_by_container_or_the_injectors_status() -> None:
    assert mesh_of(pod(["app", "istio-proxy"]), None) == "istio"
    status = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
    assert mesh_of(pod(["app"], status), None) == "istio"  # proxy taken out: still Istio's
    native = pod(["app"], init=[{"name": "istio-proxy", "restartPolicy": "Always"}])
    assert mesh_of(native, None) == "istio"
    init_only = pod(["app"], init=[{"name": "istio-proxy"}])
    assert mesh_of(init_only, None) is None  # an init container that ends is no sidecar
    assert mesh_of(pod(["app"], {"sidecar.istio.io/status": ""}), None) is None


def test_the_container_decides_before_the_namespaces_annotation() -> None:
    linkerd_ns = {"metadata": {"annotations": {"linkerd.io/inject": "enabled"}}}
    assert mesh_of(pod(["app", "istio-proxy"]), linkerd_ns) == "istio"
    assert mesh_of(pod(["app"]), linkerd_ns) == "linkerd"
    assert mesh_of(pod(["app", "linkerd-proxy"]), None) == "linkerd"
    assert mesh_of(pod(["app"]), None) is None


def test_istio_pods_are_left_out_unless_asked() -> None:
    assert mesh_of(pod(["app", "istio-proxy"]), None, istio=False) is None
    assert mesh_of(pod(["app", "linkerd-proxy"]), None, istio=False) == "linkerd"


def test_each_mesh_spells_the_identity_its_own_way() -> None:
    who = identity(pod(["app", "istio-proxy"]))
    assert principal(who, "istio") == "spiffe://cluster.local/ns/shop/sa/api"
    assert principal(who, "istio", "corp.example") == "spiffe://corp.example/ns/shop/sa/api"
    assert principal(who, "linkerd") == ("api.shop.serviceaccount.identity.linkerd.cluster.local")


def test_broken_objects_do_not_crash() -> None:
    for broken in ({}, {"metadata": None, "spec": []}, {"metadata": {"annotations": "x"}}):
        assert mesh_of(broken, None) is None  # type: ignore[arg-type]
