"""The mesh guard's traffic watches on real network namespaces: a pod without a proxy that
connects to an istiod-like pod's debug port is alerted (found through the real API server, as
the node agent finds it) while a sidecar-carrying pod on 15012 is not; a plaintext request
sent straight to an enforce pod's app port, around its proxy, is a bypass, while the same
request through the proxy is not."""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from meshward.app.controlplaneview import ControlPlaneView
from meshward.app.nodeagent import PodDiscovery
from meshward.core.observation import Identity
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS, MESH_SIDECAR_BYPASS
from meshward.core.wire import LINKERD_INBOUND_PORT, LINKERD_PROXY_PORTS
from meshward.kube.watch import wait_for
from meshward.tap.node.bypass import BypassConfig, BypassMonitor
from meshward.tap.node.controlplane import ControlPlaneMonitor
from meshward.tap.node.pipeline import NodeTap, PodTarget
from tests.support.apiserver import KubeCluster
from tests.support.linkerdpod import GRPC_PORT, HTTP_PORT, LinkerdPod
from tests.support.netns import Node, need_netns
from tests.support.nodetaprun import Running
from tests.support.nodetaprun import pod_object as _pod
from tests.support.nodetaprun import run_pod as _run

pytestmark = pytest.mark.integration


def _subnet() -> str:
    """A random /24 inside our namespaces: the API server is shared, pod IPs must not clash."""
    return f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"


@pytest.fixture
def node() -> Iterator[Node]:
    need_netns()
    with Node(subnet=_subnet()) as n:
        yield n


def _listen(pod: Any, *ports: int) -> None:
    code = (
        "import socket,sys,threading\n"
        "def serve(p):\n"
        "    s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"    s.bind(({pod.ip!r},p));s.listen(64)\n"
        "    while True:\n"
        "        c,_=s.accept();c.close()\n"
        f"for p in {list(ports)!r}: threading.Thread(target=serve,args=(p,),daemon=True).start()\n"
        "threading.Event().wait()\n"
    )
    pod.popen([sys.executable, "-c", code])
    for p in ports:
        pod.wait_port(p)


def _connect(pod: Any, ip: str, port: int) -> None:
    pod.run(
        [sys.executable, "-c", f"import socket;socket.create_connection(({ip!r},{port}),2).close()"]
    )


def test_a_client_without_a_proxy_on_istiods_debug_port_is_alerted(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    kube, ns = kube_cluster, kube_namespace
    node_name = f"node-{uuid.uuid4().hex[:8]}"
    istiod, meshed, bare = node.add_pod("istiod"), node.add_pod("meshed"), node.add_pod("bare")
    _listen(istiod, 15012, 15014)
    view = ControlPlaneView()
    tap = NodeTap([], [node.bridge], lambda o: None, host_netns=node.netns)
    tap.cpmon = ControlPlaneMonitor(view.endpoint_of, view.client_of)
    running = Running(tap)
    api = kube.api_client()
    agent = PodDiscovery(api, node_name, tap, net_iface=None, on_pods=view.set_local_pods)
    try:
        view.start(api)
        agent.start()
        assert wait_for(lambda: view.synced() and agent.synced(), 15)
        _run(kube, _pod("istiod-1", ns, "node-far", ["discovery"], {"app": "istiod"}), istiod.ip)
        _run(kube, _pod("web-1", ns, node_name, ["web", "istio-proxy"], {"app": "web"}), meshed.ip)
        _run(kube, _pod("debug-1", ns, node_name, ["sh"], {"app": "debug"}), bare.ip)
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "istiod", "namespace": ns, "labels": {"app": "istiod"}},
            "spec": {
                "selector": {"app": "istiod"},
                "ports": [
                    {"name": "grpc-xds", "port": 15010},
                    {"name": "https-dns", "port": 15012},
                    {"name": "https-webhook", "port": 443, "targetPort": 15017},
                    {"name": "http-monitoring", "port": 15014},
                ],
            },
        }
        kube.kubectl("apply", "-f", "-", input=json.dumps(svc))
        assert wait_for(
            lambda: (
                view.endpoint_of(istiod.ip, 15014) is not None
                and view.client_of(bare.ip) is not None
                and view.client_of(meshed.ip) is not None
            ),
            15,
        )
        cluster_ip = kube.kubectl(
            "get", "service", "istiod", "-n", ns, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout
        webhook = (
            view.endpoint_of(cluster_ip, 443)
            if wait_for(lambda: view.endpoint_of(cluster_ip, 443) is not None, 10)
            else None
        )
        assert webhook is not None and webhook.port == 15017 and webhook.purpose == "webhook"

        _connect(meshed, istiod.ip, 15012)  # a sidecar's xDS: learned, not alerted
        _connect(bare, istiod.ip, 15014)  # no sidecar on the debug port
        assert wait_for(lambda: running.alerts(MESH_CONTROL_PLANE_ACCESS), 5), running.seen
        time.sleep(0.5)
        (alert,) = running.alerts(MESH_CONTROL_PLANE_ACCESS)
        assert alert.source.key == f"{ns}/debug" and alert.source.ip == bare.ip
        assert alert.destination.key == f"{ns}/istiod" and alert.destination.port == 15014
        assert alert.extra["rule"] == "open-port" and alert.extra["client_sidecar"] == "false"
        assert tap.cpmon.stats["cp_connections"] == 2, tap.stats()
        assert tap.cpmon.learned() == {f"{ns}/istiod:15012": [f"{ns}/web (sidecar)"]}
    finally:
        agent.stop()
        view.stop()
        running.close()


def test_a_request_around_an_enforce_pods_proxy_is_a_bypass(node: Node) -> None:
    server, client = node.add_pod("api"), node.add_pod("client")
    pod = LinkerdPod(server)
    pod.start()
    principal = "api.shop.serviceaccount.identity.linkerd.cluster.local"
    target = PodTarget(server.netns, Identity("shop", "api", principal), "eth0", [server.ip])
    tap = NodeTap([target], [], lambda o: None)
    tap.bypass = BypassMonitor(
        tap.by_ip.get, lambda ns: "enforce", LINKERD_PROXY_PORTS, BypassConfig(confirm_window=1.0)
    )
    running = Running(tap)
    try:
        time.sleep(0.3)
        url = f"http://{server.ip}:{{}}/orders/7?x=1"
        # through the proxy: the request reaches the app over lo, carried by the proxy
        client.run(["curl", "-sf", "-o", "/dev/null", url.format(LINKERD_INBOUND_PORT)])
        assert wait_for(lambda: any(o.path == "/orders/7" for o in running.seen), 5)
        time.sleep(1.5)  # past the confirm window: nothing
        assert running.alerts(MESH_SIDECAR_BYPASS) == []
        # around it: straight to the app port on the pod IP
        client.run(["curl", "-sf", "-o", "/dev/null", url.format(HTTP_PORT)])
        assert wait_for(lambda: running.alerts(MESH_SIDECAR_BYPASS), 5), tap.stats()
        (alert,) = running.alerts(MESH_SIDECAR_BYPASS)
        assert alert.destination.key == "shop/api" and alert.destination.port == HTTP_PORT
        assert alert.source.ip == client.ip and alert.method == "GET"
        assert alert.path == "/orders/7" and alert.query == "x=1"
        assert tap.bypass.stats["bypass_candidates"] == 1
        # gRPC (HTTP/2 without TLS) straight to the app's gRPC port: a bypass too
        code = (
            "import grpc\nfrom grpc_health.v1 import health_pb2, health_pb2_grpc\n"
            f"with grpc.insecure_channel('{server.ip}:{GRPC_PORT}') as ch:\n"
            "    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)\n"
        )
        client.run([sys.executable, "-c", code])
        assert wait_for(lambda: len(running.alerts(MESH_SIDECAR_BYPASS)) == 2, 5), tap.stats()
        h2 = running.alerts(MESH_SIDECAR_BYPASS)[1]
        assert h2.protocol == "h2" and h2.destination.port == GRPC_PORT
    finally:
        running.close()
        pod.cleanup()


def _proxy_init(pod: Any, skip_ports: tuple[int, ...] = ()) -> None:
    """What Linkerd's proxy-init does to a pod's inbound TCP: every port to the proxy's
    inbound 4143, but the proxy's own and the skipped ones (config.linkerd.io/skip-inbound-
    ports); iptables in the pod's namespace, as the init container runs it."""
    pod.run(["iptables", "-t", "nat", "-F", "PREROUTING"])
    for port in (*skip_ports, 4190, 4191, LINKERD_INBOUND_PORT):
        pod.run(
            [
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                str(port),
                "-j",
                "RETURN",
            ]
        )
    pod.run(
        [
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(LINKERD_INBOUND_PORT),
        ]
    )


def test_a_redirected_plaintext_caller_is_not_a_bypass_until_its_port_is_skipped(
    node: Node,
) -> None:
    if shutil.which("iptables") is None:
        pytest.skip("missing tool: iptables")
    server, client = node.add_pod("api"), node.add_pod("client")
    pod = LinkerdPod(server)
    pod.start()
    _proxy_init(server)
    target = PodTarget(server.netns, Identity("shop", "api"), "eth0", [server.ip])
    tap = NodeTap([target], [], lambda o: None)
    tap.bypass = BypassMonitor(
        tap.by_ip.get, lambda ns: "enforce", LINKERD_PROXY_PORTS, BypassConfig(confirm_window=1.0)
    )
    running = Running(tap)
    try:
        time.sleep(0.3)
        url = f"http://{server.ip}:{HTTP_PORT}/orders/8"
        # plaintext to the app port, redirected to the proxy, which hands it to the app on lo
        client.run(["curl", "-sf", "-o", "/dev/null", url])
        assert wait_for(lambda: tap.bypass.stats["bypass_proxied"] == 1, 5), tap.stats()
        assert running.alerts(MESH_SIDECAR_BYPASS) == []
        assert tap.bypass.stats["bypass_candidates"] == 1  # the eth0 head was seen and cleared
        _proxy_init(server, skip_ports=(HTTP_PORT,))  # the port excluded from redirection
        client.run(["curl", "-sf", "-o", "/dev/null", url])
        assert wait_for(lambda: running.alerts(MESH_SIDECAR_BYPASS), 5), tap.stats()
        assert tap.bypass.stats["bypass_proxied"] == 1
    finally:
        running.close()
        pod.cleanup()


def test_the_command_alerts_a_control_plane_snoop(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    """`meshward node-tap --node N --iface br0`: the control plane and the node's pods come from
    the API server, the SYN from the bridge, the alert on stdout."""
    import os
    import subprocess
    from pathlib import Path

    kube, ns = kube_cluster, kube_namespace
    node_name = f"node-{uuid.uuid4().hex[:8]}"
    istiod, bare = node.add_pod("istiod"), node.add_pod("bare")
    _listen(istiod, 15010)
    _run(kube, _pod("istiod-1", ns, "node-far", ["discovery"], {"app": "istiod"}), istiod.ip)
    _run(kube, _pod("debug-1", ns, node_name, ["sh"], {"app": "debug"}), bare.ip)
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshward",
            "node-tap",
            "--node",
            node_name,
            "--kubeconfig",
            str(kube.kubeconfig),
            "--pod-iface",
            "none",
            "--iface",
            node.bridge,
            "--host-netns",
            node.path,
            "--duration",
            "20",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    logs: list[str] = []
    found: list[dict] = []

    def read_logs() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            logs.append(line)

    def read_out() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                found.append(json.loads(line))

    for reader in (read_logs, read_out):
        threading.Thread(target=reader, daemon=True).start()

    def alerts() -> list[dict]:
        return [o for o in list(found) if o.get("threats")]

    try:
        assert wait_for(lambda: any('"control plane"' in ln for ln in logs), 20), logs[-20:]
        deadline = time.monotonic() + 10
        while not alerts() and time.monotonic() < deadline:  # until this node's pods synced
            _connect(bare, istiod.ip, 15010)
            wait_for(alerts, 0.5)
        (alert,) = alerts()
        assert alert["threats"][0]["name"] == MESH_CONTROL_PLANE_ACCESS
        assert alert["extra"]["rule"] == "open-port"
        assert alert["source"]["workload"] == "debug" and alert["destination"]["port"] == 15010
    finally:
        proc.terminate()
        proc.wait(10)
