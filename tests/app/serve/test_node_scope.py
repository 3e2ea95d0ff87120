"""A node tap speaks only for pods on its own node, on a real kube-apiserver (v1.20): its token
is a TokenRequest bound to its Pod object (as the kubelet's projected token is), TokenReview
gives the pod, serve's pod index gives the pod's node, and an observation whose destination is
not a pod on that node is refused and counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from meshward.app.auth import AuthConfig
from meshward.app.install import PERMISSIONS
from meshward.core.observation import Identity, Observation, observation_to_dict
from meshward.runtime.client import ApiClient, ApiError
from tests.support.apiserver import KubeCluster
from tests.support.kubeauth import grant, pod, sa_token, serve_kubeconfig, service_account
from tests.support.metrics import sample
from tests.support.serve import running_server

pytestmark = pytest.mark.integration


def _obs(ns: str, workload: str, ip: str = "", path: str = "/x") -> dict[str, Any]:
    return observation_to_dict(
        Observation(
            seen_by="node-tap",
            destination=Identity(ns, workload, ip=ip, port=8080 if ip else 0),
            source=Identity(ns, "web"),
            method="GET",
            path=path,
        )
    )


def test_node_tap_speaks_only_for_its_node(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kubeconfig = serve_kubeconfig(kube_cluster, ns, PERMISSIONS["serve"])
    service_account(kube_cluster, ns, "tap")
    tap_rules = [r for r in PERMISSIONS["node-tap"] if r["apiGroups"] == ["meshward.io"]]
    grant(kube_cluster, tap_rules, ns, "tap")
    tap_uid = pod(kube_cluster, ns, "tap-a", "node-a", sa="tap", ip="10.9.0.1")
    pod(kube_cluster, ns, "api-a", "node-a", app="api", ip="10.1.0.5")
    pod(kube_cluster, ns, "api-b", "node-b", app="api", ip="10.1.0.6")
    pod(kube_cluster, ns, "cart-b", "node-b", app="cart", ip="10.1.0.7")
    bound = sa_token(kube_cluster, ns, "tap", ["meshward"], pod=("tap-a", tap_uid))
    unbound = sa_token(kube_cluster, ns, "tap", ["meshward"])
    batch = [
        _obs(ns, "api", path="/mine"),  # a workload with a pod on node-a
        _obs(ns, "api", "127.0.0.1", "/loopback"),  # captured on the pod's lo
        _obs(ns, "api", "10.1.0.5", "/by-ip"),  # api-a's IP
        _obs(ns, "cart", path="/cart"),  # cart runs on node-b only
        _obs(ns, "api", "10.1.0.6", "/other-node"),  # api-b's IP: node-b
        _obs(ns, "cart", "10.1.0.5", "/lie"),  # api-a's IP claimed as cart
        _obs("elsewhere", "db", path="/db"),  # no such pod anywhere
    ]

    async def main() -> None:
        auth = AuthConfig(kubernetes=True, kubeconfig=kubeconfig)
        async with running_server(auth=auth) as srv:
            assert srv.pods is not None
            deadline = time.monotonic() + 15
            while srv.pods.by_ip("10.1.0.7") is None:  # the index saw the last status patch
                assert time.monotonic() < deadline, "pod index never synced"
                await asyncio.sleep(0.1)
            url = f"http://127.0.0.1:{srv.ports['http']}"
            with pytest.raises(ApiError) as no_pod:
                await asyncio.to_thread(ApiClient(url, unbound).post_observations, batch)
            assert no_pod.value.status == 403 and "pod-bound" in no_pod.value.reason
            got = await asyncio.to_thread(ApiClient(url, bound).post_observations, batch)
            assert got == {"accepted": 3, "rejected": 4, "outside_node": 4}
            doc = srv.engine.allowlist.export_doc()
            assert [s["destination"] for s in doc["services"]] == [f"{ns}/api"]
            paths = {e["path"] for e in doc["services"][0]["endpoints"]}
            assert paths == {"/mine", "/loopback", "/by-ip"}
            text = srv.metrics.exposition().decode()
            assert sample(text, 'meshward_drops_total{reason="outside-node",where="ingest"}') == 4
            assert sample(text, 'meshward_drops_total{reason="no-node",where="ingest"}') == 1

    asyncio.run(main())
