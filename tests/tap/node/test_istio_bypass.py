"""Sidecar bypass of an enforce-mode Istio pod, on real network namespaces: a real Envoy as
Istio's inbound sidecar (15006, original destination, upstream bound to 127.0.0.6), the nat
rules istio-iptables writes, and the node agent finding the pod on the real API server by its
`istio-proxy` container. A request through the sidecar is cleared by the proxy's hop on `lo`
and not reported a second time (ext_authz reports it), as are one the sidecar refuses itself
and one to a port the sidecar closes unanswered (STRICT); once the port is excluded from the
redirection, the same request is `Mesh.Sidecar.Bypass`."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshward.app.nodeagent import PodDiscovery
from meshward.core.threats.names import MESH_SIDECAR_BYPASS
from meshward.kube.watch import wait_for
from meshward.tap.node.bypass import BypassConfig, BypassMonitor
from meshward.tap.node.pipeline import NodeTap
from tests.support.apiserver import KubeCluster
from tests.support.istiopod import IstioPod, istio_iptables
from tests.support.linkerdpod import GRPC_PORT, HTTP_PORT
from tests.support.netns import Node, need_netns
from tests.support.nodetaprun import Running, pod_object, run_pod

pytestmark = pytest.mark.integration

GRPC_CHECK = (
    "import grpc,sys\nfrom grpc_health.v1 import health_pb2, health_pb2_grpc\n"
    "with grpc.insecure_channel(sys.argv[1]) as ch:\n"
    "    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)\n"
)


@pytest.fixture
def node() -> Iterator[Node]:
    need_netns()
    if shutil.which("iptables") is None:
        pytest.skip("missing tool: iptables")
    # a random /24: the API server is shared, pod IPs must not clash between concurrent runs
    with Node(subnet=f"10.{random.randint(100, 250)}.{random.randint(0, 255)}") as n:
        yield n


def test_a_request_around_an_istio_sidecar_is_a_bypass(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    kube, ns = kube_cluster, kube_namespace
    node_name = f"node-{uuid.uuid4().hex[:8]}"
    server, client = node.add_pod("api"), node.add_pod("client")
    pod = IstioPod(server)
    pod.start()
    istio_iptables(server)
    tap = NodeTap([], [], lambda o: None)
    tap.bypass = BypassMonitor(
        tap.by_ip.get,
        lambda ns: "enforce",
        config=BypassConfig(confirm_window=1.0, answer_window=2.0),
    )
    running = Running(tap)
    agent = PodDiscovery(kube.api_client(), node_name, tap, istio=True)
    try:
        agent.start()
        assert wait_for(agent.synced, 15)
        annotations = {
            "sidecar.istio.io/status": '{"containers":["istio-proxy"]}',
            "traffic.sidecar.istio.io/excludeInboundPorts": str(HTTP_PORT),
        }
        obj = pod_object("api-1", ns, node_name, ["api", "istio-proxy"], {"app": "api"})
        obj["metadata"]["annotations"] = annotations
        run_pod(kube, obj, server.ip)
        assert wait_for(lambda: server.ip in tap.by_ip, 15), (agent.unresolved, tap.stats())
        assert tap.by_ip[server.ip].principal == f"spiffe://cluster.local/ns/{ns}/sa/default"
        time.sleep(0.3)

        # plaintext to the app port: redirected to 15006, handed to the app from 127.0.0.6
        url = f"http://{server.ip}:{HTTP_PORT}/orders/7?x=1"
        client.run(["curl", "-sf", "-o", "/dev/null", url])
        client.run([sys.executable, "-c", GRPC_CHECK, f"{server.ip}:{GRPC_PORT}"])
        # refused by the sidecar itself (as ext_authz denies), and to a port it has no
        # plaintext chain for (as under STRICT): the app never saw either
        denied = f"http://{server.ip}:{HTTP_PORT}/denied/1"
        assert (
            client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", denied]).stdout
            == "403"
        )
        closed = client.run(["curl", "-s", f"http://{server.ip}:9090/x"], check=False)
        assert closed.returncode != 0
        stats = tap.bypass.stats
        assert wait_for(lambda: stats["bypass_unanswered"] == 1, 5), tap.stats()
        assert stats["bypass_proxied"] == 2 and stats["bypass_refused"] == 1
        assert stats["bypass_candidates"] == 4  # every head seen on eth0, none a bypass
        assert tap.metrics.proxy_hops >= 2  # the GET, and the gRPC call's preface or HEADERS
        assert running.seen == []  # the sidecar's requests are ext_authz's to report, not ours

        # the port excluded from the redirection (as the annotation asks): around the sidecar
        istio_iptables(server, exclude_inbound=(HTTP_PORT,))
        client.run(["curl", "-sf", "-o", "/dev/null", url])
        assert wait_for(lambda: running.alerts(MESH_SIDECAR_BYPASS), 5), tap.stats()
        (alert,) = running.alerts(MESH_SIDECAR_BYPASS)
        assert alert.destination.key == f"{ns}/api" and alert.destination.port == HTTP_PORT
        assert alert.destination.principal == f"spiffe://cluster.local/ns/{ns}/sa/default"
        assert alert.source.ip == client.ip and alert.method == "GET"
        assert alert.path == "/orders/7" and alert.query == "x=1"
        assert alert.extra["answered"] == "200"
        assert tap.bypass.stats["bypass_proxied"] == 2
    finally:
        agent.stop()
        running.close()
        pod.cleanup()


def test_the_command_finds_the_istio_pod_and_alerts_the_bypass(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    """`meshward node-tap --node N`, as a process: the Istio pod comes from the API server, its
    namespaces from the node's, the alert on stdout; the request through the sidecar raises
    nothing."""
    kube, ns = kube_cluster, kube_namespace
    node_name = f"node-{uuid.uuid4().hex[:8]}"
    server, client = node.add_pod("api"), node.add_pod("client")
    pod = IstioPod(server)
    pod.start()
    istio_iptables(server, exclude_inbound=(GRPC_PORT,))
    obj = pod_object("api-1", ns, node_name, ["api", "istio-proxy"], {"app": "api"})
    run_pod(kube, obj, server.ip)
    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "meshward", "node-tap", "--node", node_name]
    cmd += ["--kubeconfig", str(kube.kubeconfig), "--mode", f"{ns}=enforce", "--duration", "30"]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    logs: list[str] = []
    found: list[dict] = []

    def read(stream: Any, into: Callable[[str], None]) -> None:
        for line in stream:
            into(line)

    threading.Thread(target=read, args=(proc.stderr, logs.append), daemon=True).start()
    keep = lambda line: found.append(json.loads(line)) if line.startswith("{") else None  # noqa: E731
    threading.Thread(target=read, args=(proc.stdout, keep), daemon=True).start()
    try:
        assert wait_for(lambda: any('"capturing"' in ln and ":lo" in ln for ln in logs), 20), logs
        client.run(["curl", "-sf", "-o", "/dev/null", f"http://{server.ip}:{HTTP_PORT}/ok"])
        client.run([sys.executable, "-c", GRPC_CHECK, f"{server.ip}:{GRPC_PORT}"])
        assert wait_for(lambda: any(o.get("threats") for o in found), 15), (found, logs[-10:])
        time.sleep(1.5)  # the proxied request is judged by now too
        (alert,) = [o for o in found if o.get("threats")]
        assert alert["threats"][0]["name"] == MESH_SIDECAR_BYPASS
        assert alert["destination"]["port"] == GRPC_PORT and alert["protocol"] == "h2"
        assert alert["destination"]["principal"] == f"spiffe://cluster.local/ns/{ns}/sa/default"
        assert not [o for o in found if not o.get("threats")]  # nothing reported twice
    finally:
        proc.terminate()
        proc.wait(10)
        pod.cleanup()
