"""The node tap as a cluster agent: it finds the meshed pods of its node by itself.

It watches the Pods of its own node only (field selector `spec.nodeName=NODE`: a thousand
agents must not each list the cluster) and the Namespaces (for the `linkerd.io/inject`
annotation), and keeps the node tap's captures in step with what is capturable (meshed,
Running, with an IP): each new one is attached to the network namespace that holds its IP
(meshward.tap.node.netns), each one that goes, loses its IP or stops being meshed is detached.
The watches relist after a restart or a broken watch, and the relist's full view is diffed
against what is attached, so nothing is missed or left behind.

Linkerd pods (meshward.linkerd.pods) are always attached: their `lo` is where meshward reads
their traffic. Istio pods (meshward.istio.sidecar: the `istio-proxy` container or the
injector's `sidecar.istio.io/status`) are attached with `istio=True`, for the bypass watch
only: their sidecar reports through ext_authz already. One path for both: the same watches,
diff, namespace lookup and retries; only the mesh and the identity's spelling differ.

The destination identity of what is captured comes from the cluster (namespace, workload and
the mesh identity of the Pod's service account), never from the traffic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshward.core.log import event
from meshward.core.observation import Identity
from meshward.core.peer import SpiffeId
from meshward.istio.sidecar import has_sidecar as istio_sidecar
from meshward.istio.sidecar import is_injected as istio_injected
from meshward.linkerd.pods import TRUST_DOMAIN, PodIdentity, identity, is_meshed, running
from meshward.tap.node.netns import Inode, NamespaceIndex, inode
from meshward.tap.node.pipeline import NodeTap, PodTarget, namespace_addresses

log = logging.getLogger("meshward.node-agent")
PodKey = tuple[str, str]  # namespace, name
Mesh = str  # "linkerd" | "istio" (PodTarget.mesh)


def mesh_of(
    pod: dict[str, Any], namespace: dict[str, Any] | None, istio: bool = True
) -> Mesh | None:
    """Whose proxy a pod runs, or None: its containers first (an `istio-proxy` is Istio's even
    in a namespace Linkerd injects), then the meshes' annotations."""
    if istio and istio_sidecar(pod):
        return "istio"
    if is_meshed(pod, namespace):
        return "linkerd"
    return "istio" if istio and istio_injected(pod) else None


def principal(who: PodIdentity, mesh: Mesh, trust_domain: str = TRUST_DOMAIN) -> str:
    """The pod's identity as its mesh spells it: Linkerd's DNS-like name, Istio's SPIFFE id."""
    if mesh == "istio":
        return SpiffeId(trust_domain, who.namespace, who.service_account).uri
    return who.principal(trust_domain)


@dataclass
class PodDiscovery:
    """Pods of `node` -> NodeTap.attach/detach. `api_client` is a kubernetes ApiClient."""

    api_client: Any
    node: str
    tap: NodeTap
    index: NamespaceIndex = field(default_factory=lambda: NamespaceIndex(namespace_addresses))
    net_iface: str | None = "eth0"
    trust_domain: str = TRUST_DOMAIN
    istio: bool = False  # attach Istio pods too (for the bypass watch; the tap needs `bypass`)
    # told this node's pods after each change (the control-plane watch's clients)
    on_pods: Callable[[dict[PodKey, dict[str, Any]]], None] | None = None

    def __post_init__(self) -> None:
        self.pods: dict[PodKey, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.attached: dict[PodKey, tuple[tuple[PodIdentity, Mesh], PodTarget]] = {}
        self.unresolved: set[PodKey] = set()  # capturable, but no namespace holds the IP yet
        self.found: dict[PodKey, Inode | None] = {}  # the namespace each pod was attached to
        self._failures_seen: dict[PodKey, int] = {}  # the tap's failed attaches, looked into
        self.relocated = 0  # attached pods whose namespace changed under them (and were moved)
        self._lock = threading.Lock()
        self._watchers: list[Any] = []

    def start(self) -> None:
        from kubernetes import client

        from meshward.kube.watch import Watcher

        core = client.CoreV1Api(self.api_client)
        pods = Watcher(
            core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={self.node}",
            name="pods",
        )
        namespaces = Watcher(core.list_namespace, name="namespaces")
        for w, handler in ((namespaces, self._on_namespace), (pods, self._on_pod)):
            w.start(handler)
            self._watchers.append(w)

    def stop(self) -> None:
        for w in self._watchers:
            w.stop()
        for w in self._watchers:
            w.join(5)
        self._watchers.clear()

    def synced(self) -> bool:
        return bool(self._watchers) and all(w.synced.is_set() for w in self._watchers)

    # ---- views
    def _on_pod(self, ev: Any) -> None:
        with self._lock:
            if ev.type == "SYNC":
                self.pods = dict(ev.objects or {})
            elif ev.object is not None:
                meta = ev.object.get("metadata", {})
                key = (meta.get("namespace", ""), meta.get("name", ""))
                if ev.type == "DELETED":
                    self.pods.pop(key, None)
                else:
                    self.pods[key] = ev.object
            if self.on_pods is not None:
                self.on_pods(self.pods)
            self.reconcile()

    def _on_namespace(self, ev: Any) -> None:
        with self._lock:
            if ev.type == "SYNC":
                self.namespaces = {name: o for (_, name), o in (ev.objects or {}).items()}
            elif ev.object is not None:
                name = ev.object.get("metadata", {}).get("name", "")
                if ev.type == "DELETED":
                    self.namespaces.pop(name, None)
                else:
                    self.namespaces[name] = ev.object
            self.reconcile()

    # ---- the diff
    def reconcile(self) -> None:
        """Attach what became capturable, detach what stopped being (a changed IP is both)."""
        want: dict[PodKey, tuple[PodIdentity, Mesh]] = {}
        for key, pod in self.pods.items():
            mesh = mesh_of(pod, self.namespaces.get(key[0]), self.istio)
            if mesh is not None and running(pod):
                want[key] = (identity(pod), mesh)
        for key, (was, _target) in list(self.attached.items()):
            if want.get(key) != was:
                self._detach(key)
        self.unresolved &= set(want)
        for key, (who, mesh) in want.items():
            if key in self.attached:
                continue
            netns = self.index.find(who.ip)
            if netns is None:
                if key not in self.unresolved:
                    self.unresolved.add(key)
                    event(
                        log,
                        "no network namespace holds the pod's IP yet",
                        logging.WARNING,
                        pod=f"{who.namespace}/{who.name}",
                        ip=who.ip,
                    )
                continue
            self.unresolved.discard(key)
            target = PodTarget(
                netns,
                Identity(who.namespace, who.workload, principal(who, mesh, self.trust_domain)),
                net_iface=self.net_iface,
                ips=[who.ip],
                mesh=mesh,
            )
            self.attached[key] = ((who, mesh), target)
            self.found[key] = inode(netns)
            self.tap.attach(target)
            event(
                log,
                "attaching",
                pod=f"{who.namespace}/{who.name}",
                mesh=mesh,
                workload=who.workload,
                service_account=who.service_account,
                ip=who.ip,
                netns=netns,
            )

    def _detach(self, key: PodKey) -> None:
        (who, _mesh), target = self.attached.pop(key)
        self.found.pop(key, None)
        self._failures_seen.pop(key, None)
        self.index.forget(who.ip)
        self.tap.detach(target)

    def look_again(self) -> None:
        """Every few seconds (the command's `pod-retry` thread): look a pod's IP up again when
        its namespace was not found yet (the CNI was still setting it up), when the namespace
        it was attached to is no longer at that path (its sandbox restarted: a new network
        namespace, often the same IP, and the Pod object need not change at all), or when its
        attach failed again. A pod whose namespace changed is detached from the old one (its
        sockets kept that namespace alive, seeing nothing) and attached to the new one."""
        with self._lock:
            moved = False
            for key, ((who, _mesh), target) in list(self.attached.items()):
                failures = self.tap.failing.get(target.netns, 0)
                now = inode(target.netns)
                stale = now is None or now != self.found.get(key)
                if not stale and failures <= self._failures_seen.get(key, 0):
                    continue
                self._failures_seen[key] = failures
                if not stale:  # failing where it was found: is the pod's IP elsewhere now?
                    self.index.forget(who.ip)
                    netns = self.index.find(who.ip)
                    if netns is None or inode(netns) == self.found.get(key):
                        continue  # not elsewhere: the tap's own retries go on
                self.relocated += 1
                event(
                    log,
                    "pod network namespace changed",
                    logging.WARNING,
                    pod=f"{who.namespace}/{who.name}",
                    ip=who.ip,
                    old=target.netns,
                    gone=stale,
                    failed_attaches=failures,
                )
                self._detach(key)
                moved = True
            if self.unresolved or moved:
                self.reconcile()
