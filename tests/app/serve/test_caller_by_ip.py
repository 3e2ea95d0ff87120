"""A plaintext caller on another node, known to the node tap only by its IP, is named by serve
after the pod holding that IP (serve's pod index, on a real kube-apiserver), marked as resolved
by IP, never as verified; addresses no single live pod holds stay as they came."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from kubernetes import client

from meshward.app.auth import AuthConfig
from meshward.app.install import PERMISSIONS
from meshward.core.engine import Engine
from meshward.core.observation import (
    Identity,
    Observation,
    Threat,
    Verdict,
    observation_to_dict,
)
from meshward.core.threats.inspection import NoDetector
from meshward.runtime.client import ApiClient
from tests.support.apiserver import KubeCluster
from tests.support.kubeauth import grant, pod, sa_token, serve_kubeconfig, service_account
from tests.support.metrics import sample
from tests.support.serve import running_server

pytestmark = pytest.mark.integration

# this run's addresses: the API server is shared by the session's tests (other namespaces hold
# pods too), and an IP two live pods claim is answered for neither
NET = f"10.77.{random.randrange(256)}"
LINKERD_ID = "web.{ns}.serviceaccount.identity.linkerd.cluster.local"


class Recording(Engine):
    """The real engine, keeping what it was asked to judge."""

    def __init__(self) -> None:
        super().__init__(detector=NoDetector())
        self.seen: list[Observation] = []

    def evaluate(self, obs: Observation, *args: Any, **kwargs: Any) -> Verdict:
        self.seen.append(obs)
        return super().evaluate(obs, *args, **kwargs)


def _flood(ns: str, source: Identity, tag: str) -> dict[str, Any]:
    """An ICMP flood alert as the node tap sends it, to api-a (on the tap's node)."""
    return observation_to_dict(
        Observation(
            seen_by="node-tap",
            source=source,
            destination=Identity(ns, "api", ip=f"{NET}.5"),
            protocol="icmp",
            threats=[Threat("ICMP.Flood", "network", "250 packets in 1s")],
            extra={"tag": tag},
        )
    )


def _host_network_pod(cluster: KubeCluster, ns: str, name: str, node: str, ip: str) -> None:
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        spec = {
            "nodeName": node,
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "example/c:1"}],
        }
        core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": spec})
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip}
        core.patch_namespaced_pod_status(name, ns, {"status": status})


def test_plaintext_caller_ip_is_resolved_to_its_pod(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    kubeconfig = serve_kubeconfig(kube_cluster, ns, PERMISSIONS["serve"])
    service_account(kube_cluster, ns, "tap")
    tap_rules = [r for r in PERMISSIONS["node-tap"] if r["apiGroups"] == ["meshward.io"]]
    grant(kube_cluster, tap_rules, ns, "tap")
    tap_uid = pod(kube_cluster, ns, "tap-a", "node-a", sa="tap", ip=f"{NET}.201")
    pod(kube_cluster, ns, "api-a", "node-a", app="api", ip=f"{NET}.5")
    pod(kube_cluster, ns, "cart-b", "node-b", app="cart", ip=f"{NET}.7")
    _host_network_pod(kube_cluster, ns, "agent-b", "node-b", f"{NET}.202")
    # a recycled address seen before the old pod's deletion: two live pods claim it
    pod(kube_cluster, ns, "old-c", "node-c", app="old", ip=f"{NET}.8")
    pod(kube_cluster, ns, "new-c", "node-c", app="new", ip=f"{NET}.8")
    token = sa_token(kube_cluster, ns, "tap", ["meshward"], pod=("tap-a", tap_uid))
    batch = [
        _flood(ns, Identity(ip=f"{NET}.7", port=0), "plaintext"),  # cart-b on node-b
        _flood(ns, Identity(ip=f"::ffff:{NET}.7"), "mapped"),  # the same, IPv4-mapped
        _flood(ns, Identity(ip=f"{NET}.99"), "unknown"),  # no pod holds it
        _flood(ns, Identity(ip=f"{NET}.202"), "host-network"),  # a node's address
        _flood(ns, Identity(ip=f"{NET}.8"), "claimed-twice"),
        _flood(ns, Identity.parse(LINKERD_ID.format(ns=ns), ip=f"{NET}.7"), "verified"),
        _flood(ns, Identity(ip="127.0.0.1"), "loopback"),
    ]

    async def main() -> None:
        engine = Recording()
        auth = AuthConfig(kubernetes=True, kubeconfig=kubeconfig)
        async with running_server(engine=engine, auth=auth) as srv:
            assert srv.pods is not None
            deadline = time.monotonic() + 15
            while srv.pods.by_ip(f"{NET}.7") is None or srv.pods.get(ns, "new-c") is None:
                assert time.monotonic() < deadline, "pod index never synced"
                await asyncio.sleep(0.1)
            url = f"http://127.0.0.1:{srv.ports['http']}"
            got = await asyncio.to_thread(ApiClient(url, token).post_observations, batch)
            assert got == {"accepted": 7, "rejected": 0, "outside_node": 0}
            seen = {o.extra["tag"]: o for o in engine.seen}
            for tag in ("plaintext", "mapped"):
                src = seen[tag].source
                assert (src.namespace, src.workload, src.principal) == (ns, "cart", "")
                assert seen[tag].extra["source_by"] == "pod-ip"
                assert seen[tag].extra["source_pod"] == f"{ns}/cart-b"
            verified = seen["verified"]
            assert verified.source.principal == LINKERD_ID.format(ns=ns)
            assert (verified.source.workload, "source_by" in verified.extra) == ("web", False)
            for tag, ip in (
                ("unknown", f"{NET}.99"),
                ("host-network", f"{NET}.202"),
                ("claimed-twice", f"{NET}.8"),
            ):
                assert seen[tag].source == Identity(ip=ip), tag
                assert "source_by" not in seen[tag].extra
            assert seen["loopback"].source == Identity(ip="127.0.0.1")
            alerts = {a["source"] for a in srv.engine.alerts()}
            assert alerts == {
                f"{ns}/cart",
                f"{ns}/web",
                f"{NET}.99",
                f"{NET}.202",
                f"{NET}.8",
                "127.0.0.1",
            }
            text = srv.metrics.exposition().decode()
            assert sample(text, 'meshward_callers_by_ip_total{outcome="resolved"}') == 2
            assert sample(text, 'meshward_callers_by_ip_total{outcome="unknown"}') == 3

    asyncio.run(main())


def test_standalone_serve_leaves_ip_sources_alone() -> None:
    """Without a cluster there is no pod index: the step is not in the pipeline."""

    async def main() -> None:
        engine = Recording()
        async with running_server(engine=engine) as srv:
            assert srv.pods is None
            assert not any(type(s).__name__ == "CallerByIp" for s in srv.pipeline.steps)
            srv.pipeline.take_ingested(
                Observation(seen_by="node-tap", source=Identity(ip=f"{NET}.7"))
            )
            assert engine.seen[0].source == Identity(ip=f"{NET}.7")

    asyncio.run(main())
