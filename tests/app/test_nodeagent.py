"""The node tap as a cluster agent, on a real API server and real network namespaces: it finds
the meshed pods of its own node, captures them with identities from the Pod objects, detaches
when they go (sockets back to baseline), and keeps working across an API server restart."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshward.app.nodeagent import PodDiscovery
from meshward.core.observation import Observation
from meshward.kube.watch import wait_for
from meshward.tap.node.netns import inode
from meshward.tap.node.pipeline import NodeTap
from tests.support.apiserver import KubeCluster
from tests.support.netns import Node, Pod, need_netns

pytestmark = pytest.mark.integration
NODE = "node-1"


def _pod_object(name: str, ns: str, node: str, meshed: bool) -> dict[str, Any]:
    containers = [{"name": "app", "image": "app:1"}]
    if meshed:
        containers.append({"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:stable"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-5d8f7c-abcde",
            "namespace": ns,
            "labels": {"app": name, "pod-template-hash": "5d8f7c"},
        },
        "spec": {"nodeName": node, "containers": containers, "serviceAccountName": f"{name}-sa"},
    }


def _run(kube: KubeCluster, obj: dict[str, Any], ip: str) -> str:
    """Create the Pod and set what a kubelet would: Running, with its IP."""
    kube.kubectl("apply", "-f", "-", input=json.dumps(obj))
    name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
    status = {"status": {"phase": "Running", "podIP": ip, "hostIP": "10.215.0.1"}}
    kube.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    return name


def _same_ns(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


@pytest.fixture
def node() -> Iterator[Node]:
    """Pod IPs of a random /24: the agent scans every namespace of the machine, so two runs at
    once on one subnet would each find the other's pods."""
    need_netns()
    with Node(subnet=f"10.215.{random.randrange(256)}") as n:
        yield n


@contextlib.contextmanager
def _discovery(
    kube: KubeCluster,
    node_name: str,
    sink: Callable[[Observation], None],
    retry_base: float | None = None,
    loop: bool = True,
) -> Iterator[tuple[NodeTap, PodDiscovery, threading.Thread]]:
    """A node tap with its packet loop (started unless `loop` is false: the test starts it)
    and the pod discovery of `node_name` started on it; all stopped and closed after."""
    tap = NodeTap([], [], sink)
    if retry_base is not None:
        tap.retry_base = retry_base
    tap.open()
    stop = threading.Event()
    packets = threading.Thread(target=tap.run, args=(stop,), daemon=True)
    if loop:
        packets.start()
    api = kube.api_client()
    agent = PodDiscovery(api, node_name, tap, net_iface=None)
    try:
        agent.start()
        yield tap, agent, packets
    finally:
        agent.stop()
        stop.set()
        if packets.is_alive():
            packets.join(10)
        tap.close()
        api.close()


def _serve_and_call(pod: Pod) -> None:
    """An app on the pod IP, called through the pod's loopback (as linkerd-proxy does)."""
    server = pod.popen([sys.executable, "-m", "http.server", "8080", "--bind", pod.ip])
    pod.wait_port(8080, pod.ip)
    pod.run(["curl", "-s", "-o", "/dev/null", f"http://{pod.ip}:8080/"])
    server.terminate()


def test_meshed_pods_of_this_node_are_found_and_captured(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    kube = kube_cluster
    web, plain = node.add_pod("web"), node.add_pod("plain")
    seen: list[Observation] = []
    with _discovery(kube, NODE, seen.append) as (tap, agent, _):
        assert wait_for(agent.synced, 15)
        baseline = _sockets()
        web_pod = _run(kube, _pod_object("web", kube_namespace, NODE, meshed=True), web.ip)
        _run(kube, _pod_object("plain", kube_namespace, NODE, meshed=False), plain.ip)
        # a meshed pod of another node, with an IP this node also holds: never ours
        _run(kube, _pod_object("away", kube_namespace, "node-2", meshed=True), plain.ip)
        assert wait_for(lambda: len(tap.attached) == 1, 15), agent.unresolved
        (netns,) = tap.attached
        assert _same_ns(netns, web.path)
        assert tap.metrics.pods_attached == 1

        _serve_and_call(web)
        assert wait_for(lambda: any(o.path == "/" for o in seen), 10)
        obs = next(o for o in seen if o.path == "/")
        assert (obs.destination.namespace, obs.destination.workload) == (kube_namespace, "web")
        # the service account's Linkerd identity, as l5d-client-id names the pod as a caller
        sa_id = f"web-sa.{kube_namespace}.serviceaccount.identity.linkerd.cluster.local"
        assert obs.destination.principal == sa_id

        # an API server restart: the watches relist, and later changes still arrive
        kube.restart()
        kube.kubectl(
            "delete",
            "pod",
            web_pod,
            "-n",
            kube_namespace,
            "--wait=false",
            "--grace-period=0",
            "--force",
        )
        assert wait_for(lambda: tap.metrics.pods_detached == 1, 20)
        assert not tap.attached
        assert wait_for(lambda: _sockets() <= baseline, 10), (_sockets(), baseline)
        assert agent.attached == {}


def test_a_pod_not_yet_in_any_namespace_is_retried(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    """The CNI may set up the namespace after the API shows the IP: the agent retries."""
    with _discovery(kube_cluster, "node-late", lambda obs: None) as (tap, agent, _):
        assert wait_for(agent.synced, 15)
        late_pod = _pod_object("late", kube_namespace, "node-late", meshed=True)
        first = f"{node.subnet}.2"  # the first pod address of the subnet
        _run(kube_cluster, late_pod, first)
        assert wait_for(lambda: bool(agent.unresolved), 10)
        late = node.add_pod("late")
        assert late.ip == first
        deadline = time.monotonic() + 10
        while not tap.attached and time.monotonic() < deadline:
            agent.look_again()
            time.sleep(0.3)
        assert tap.attached and not agent.unresolved


def test_a_restarted_sandbox_is_followed_to_its_new_namespace(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    """A pod sandbox restart gives the pod a new network namespace with the same IP, and the Pod
    object need not change: the agent sees the namespace it attached to is gone (or another one
    now sits at that path), looks the IP up again and moves the capture there, closing the old
    sockets (they were keeping the dead namespace alive, seeing nothing)."""
    web = node.add_pod("web")
    seen: list[Observation] = []
    with _discovery(kube_cluster, "node-sbx", seen.append) as (tap, agent, _):

        def moved_to(pod: Pod, times: int) -> bool:
            agent.look_again()  # what the command's pod-retry thread does every 2 s
            now = inode(pod.path)
            return agent.relocated == times and any(inode(p) == now for p in list(tap.attached))

        assert wait_for(agent.synced, 15)
        _run(kube_cluster, _pod_object("web", kube_namespace, "node-sbx", meshed=True), web.ip)
        assert wait_for(lambda: len(tap.attached) == 1, 15), agent.unresolved
        attached_sockets = _sockets()
        agent.look_again()
        assert agent.relocated == 0  # nothing changed: nothing moves

        # a new namespace under a new name (the old path is gone), then one at the same path
        for times, rename in ((1, True), (2, False)):
            web = node.restart_sandbox("web", rename=rename)
            moved = functools.partial(moved_to, web, times)
            assert wait_for(moved, 15), (tap.stats(), agent.unresolved)
            assert wait_for(lambda: len(tap.attached) == 1 and not tap._retry, 5)
            assert wait_for(lambda: _sockets() == attached_sockets, 5), _sockets()
            seen.clear()
            _serve_and_call(web)
            assert wait_for(lambda: any(o.path == "/" for o in seen), 10), tap.stats()
            obs = next(o for o in seen if o.path == "/")
            assert (obs.destination.namespace, obs.destination.workload) == (kube_namespace, "web")


def test_an_attach_failed_at_a_vanished_namespace_looks_again(
    kube_cluster: KubeCluster, kube_namespace: str, node: Node
) -> None:
    """The sandbox restarts after discovery found the namespace but before the packet loop
    attached it: the attach fails at the dead path, and instead of retrying it forever the
    agent looks the IP up again and attaches the new namespace."""
    web = node.add_pod("web")
    with _discovery(kube_cluster, "node-sbx2", lambda obs: None, retry_base=0.2, loop=False) as (
        tap,
        agent,
        loop,
    ):
        assert wait_for(agent.synced, 15)
        _run(kube_cluster, _pod_object("web", kube_namespace, "node-sbx2", meshed=True), web.ip)
        assert wait_for(lambda: bool(agent.attached), 15), agent.unresolved  # queued, not done
        (old,) = [target.netns for _, target in agent.attached.values()]
        web = node.restart_sandbox("web")
        loop.start()  # the packet loop gets to the attach now
        assert wait_for(lambda: tap.failing.get(old, 0) >= 1, 10), tap.stats()

        def attached_anew() -> bool:
            agent.look_again()
            return any(inode(p) == inode(web.path) for p in list(tap.attached))

        assert wait_for(attached_anew, 15), (tap.stats(), agent.unresolved)
        assert agent.relocated == 1
        assert wait_for(lambda: not tap._retry and not tap.failing, 5)  # the old retry is off


def test_cli_finds_pods_by_node(kube_cluster: KubeCluster, kube_namespace: str, node: Node) -> None:
    """`meshward node-tap --node NAME --kubeconfig PATH`: no --netns, the pods come from the API."""
    import subprocess
    from pathlib import Path

    web = node.add_pod("web")
    _run(kube_cluster, _pod_object("web", kube_namespace, "node-cli", meshed=True), web.ip)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshward",
            "node-tap",
            "--node",
            "node-cli",
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
            "--pod-iface",
            "none",
            "--duration",
            "4",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    attaching = [e for e in events if e.get("msg") == "attaching"]
    assert attaching and attaching[0]["workload"] == "web" and attaching[0]["ip"] == web.ip
    assert any(e.get("msg") == "capturing" and web.netns in e.get("where", "") for e in events)
