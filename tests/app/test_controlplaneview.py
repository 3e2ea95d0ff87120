"""meshward.app.controlplaneview fed watch events directly (its watches run on the real API server
in tests/tap/node/test_mesh_guard_netns.py): control-plane Pods and Services by label, each
watch's relist replacing only its own part, this node's pods with their sidecars."""

from __future__ import annotations

from typing import Any

from meshward.app.controlplaneview import ControlPlaneView
from meshward.kube.watch import Event, EventType


def _pod(name: str, ip: str, labels: dict[str, str], containers: list[str], **spec: Any) -> dict:
    return {
        "metadata": {"name": name, "namespace": "mesh", "labels": labels},
        "spec": {"containers": [{"name": c} for c in containers], **spec},
        "status": {"phase": "Running", "podIP": ip},
    }


def _sync(*objs: dict) -> Event:
    return Event(EventType.SYNC, objects={("mesh", o["metadata"]["name"]): o for o in objs})


ISTIOD = _pod("istiod-1", "10.4.0.2", {"app": "istiod"}, ["discovery"])
DST = _pod(
    "linkerd-destination-1",
    "10.4.0.3",
    {"linkerd.io/control-plane-component": "destination"},
    ["destination", "policy", "linkerd-proxy"],
)
SVC = {
    "metadata": {
        "name": "linkerd-policy",
        "namespace": "mesh",
        "labels": {"linkerd.io/control-plane-component": "destination"},
    },
    "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 8090, "targetPort": 8090}]},
}


def test_endpoints_by_label_and_relists_per_watch() -> None:
    view = ControlPlaneView()
    view.apply("pods-0", _sync(ISTIOD))
    view.apply("pods-1", _sync(DST))
    view.apply("services-1", _sync(SVC))
    assert view.endpoint_of("10.4.0.2", 15014).purpose == "monitoring-debug"  # type: ignore[union-attr]
    assert view.endpoint_of("10.4.0.2", 8086) is None
    policy = view.endpoint_of("10.96.0.7", 8090)
    assert policy is not None and (policy.component, policy.purpose) == ("destination", "policy")
    assert view.endpoint_of("10.4.0.3", 8086) is not None
    # istiod's watch relists without it: gone; Linkerd's, from another watch, stays
    view.apply("pods-0", _sync())
    assert view.endpoint_of("10.4.0.2", 15014) is None
    assert view.endpoint_of("10.4.0.3", 8086) is not None
    view.apply("pods-1", Event(EventType.DELETED, object=DST))
    assert view.endpoint_of("10.4.0.3", 8086) is None
    # the policy Service fronts the destination Deployment
    assert [e.key for e in view.control_plane()] == ["mesh/linkerd-destination"]


def test_local_pods_are_clients_with_their_sidecars() -> None:
    view = ControlPlaneView()
    native = _pod("n", "10.4.1.4", {"app": "n"}, ["app"])
    native["spec"]["initContainers"] = [{"name": "istio-proxy", "restartPolicy": "Always"}]
    view.set_local_pods(
        {
            ("mesh", "a"): _pod("a", "10.4.1.2", {"app": "a"}, ["app", "istio-proxy"]),
            ("mesh", "b"): _pod("b", "10.4.1.3", {"app": "b"}, ["app"]),
            ("mesh", "n"): native,
            ("mesh", "h"): _pod("h", "10.4.1.1", {"app": "h"}, ["app"], hostNetwork=True),
            ("mesh", "broken"): {"metadata": "x"},
        }
    )
    assert view.client_of("10.4.1.2").sidecar  # type: ignore[union-attr]
    assert not view.client_of("10.4.1.3").sidecar  # type: ignore[union-attr]
    assert view.client_of("10.4.1.4").sidecar  # type: ignore[union-attr]
    assert view.client_of("10.4.1.1") is None  # the node's address, not a pod's
