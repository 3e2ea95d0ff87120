"""serve's view of the cluster's Pods: IP -> pod, pod -> node, namespace/workload -> nodes.

One `meshward.kube` Watcher over every Pod (list, then watch, relisting on 410 or errors; a
SYNC replaces the whole view, so nothing vanished meanwhile lingers). Only what serve needs is
kept of each pod (`PodIdentity` from `meshward.linkerd.pods`, plus uid and hostNetwork), at
most `max_pods` of them (past that, new pods are counted in `overflow` and not indexed).

Workloads are named by the pod's owner references (`meshward.linkerd.pods.workload_of`: a
ReplicaSet less its pod-template-hash is the Deployment; StatefulSet, DaemonSet, Job as they
are; else the `app.kubernetes.io/name` or `app` label), the one naming meshward uses for a
workload: the node tap's, and the name the Istio filters send (`istio render --workload`).

Used to scope node-tap ingest (a node tap speaks only for pods on its own node: its bound
token names its pod, the pod names its node) and to bind a verified sidecar's workload hint to its
service account (`runs_under`, the gRPC ports' workload rule); meant for resolving a plaintext
caller's IP to its pod. An IP is answered only when exactly one live, pod-network pod holds it: a
hostNetwork pod's IP is its node's, and a pod that Succeeded or Failed released its IP, so
neither is indexed by IP; two live pods claiming one IP (a recycled address seen before the
old pod's deletion) answer nothing until that clears.

The watch thread writes; the event loop reads. Each update replaces dict entries (atomic under
the GIL), and a SYNC swaps in fresh dicts, so a reader never sees a half-applied change.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshward.core.log import event
from meshward.linkerd.pods import PodIdentity, identity

log = logging.getLogger("meshward.podindex")
MAX_PODS = 200_000
TERMINAL = frozenset({"Succeeded", "Failed"})
PodKey = tuple[str, str]  # namespace, name


@dataclass(frozen=True)
class PodInfo:
    """What serve keeps of one pod."""

    who: PodIdentity  # namespace, name, workload, service account, ip, node, phase
    uid: str
    host_network: bool

    @property
    def key(self) -> PodKey:
        return (self.who.namespace, self.who.name)

    @property
    def holds_ip(self) -> bool:
        """Whether its podIP identifies it (a live pod on the pod network)."""
        return bool(self.who.ip) and not self.host_network and self.who.phase not in TERMINAL


def pod_info(pod: Mapping[str, Any]) -> PodInfo | None:
    """A pod object as the API server sent it -> PodInfo (None when it has no name)."""
    who = identity(pod)
    if not who.namespace or not who.name:
        return None
    meta = pod.get("metadata")
    spec = pod.get("spec")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    host = spec.get("hostNetwork") if isinstance(spec, Mapping) else None
    return PodInfo(who, uid if isinstance(uid, str) else "", host is True)


class PodIndex:
    """The pods of the cluster, kept current by a watch (`start`/`stop`) or fed events
    directly (`apply`, for tests and other sources)."""

    def __init__(self, api_client: Any = None, max_pods: int = MAX_PODS) -> None:
        self.api_client = api_client
        self.max_pods = max_pods
        self.overflow = 0  # pods not indexed because the index was full
        self.synced = threading.Event()
        self._pods: dict[PodKey, PodInfo] = {}
        self._by_ip: dict[str, frozenset[PodKey]] = {}
        self._placed: dict[tuple[str, str, str], int] = {}  # (node, ns, workload) -> live pods
        self._bound: dict[tuple[str, str, str], int] = {}  # (ns, workload, account) -> live pods
        # held by writers for a whole change and by readers for a lookup: an update is a
        # remove then an add, and a reader between them saw the pod gone (a node tap's batch,
        # scoped at once per key, was then refused whole)
        self._lock = threading.Lock()
        self._watcher: Any = None

    # ---- reading (any thread) -------------------------------------------------------------
    def get(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def by_ip(self, ip: str) -> PodInfo | None:
        """The one live pod-network pod holding `ip`, else None."""
        canonical = _canonical(ip)
        with self._lock:
            keys = self._by_ip.get(canonical)
            if not keys or len(keys) != 1:
                return None
            return self._pods.get(next(iter(keys)))

    def on_node(self, node: str, namespace: str, workload: str) -> bool:
        """Whether a live pod of namespace/workload runs on `node`."""
        with self._lock:
            return self._placed.get((node, namespace, workload), 0) > 0

    def runs_under(self, namespace: str, workload: str, service_account: str) -> bool:
        """Whether a live pod of namespace/workload runs under `service_account` (the gRPC
        ports' workload rule, core.peer.WorkloadBinding). False until the index has synced:
        a hint is refused, never taken on trust, while serve cannot check it."""
        with self._lock:
            return self._bound.get((namespace, workload, service_account), 0) > 0

    def __len__(self) -> int:
        return len(self._pods)

    # ---- writing (the watch thread) -------------------------------------------------------
    def apply(self, ev: Any) -> None:
        """One watch Event: SYNC replaces the view, ADDED/MODIFIED/DELETED change one pod."""
        from meshward.kube.watch import EventType

        if ev.type == EventType.SYNC:
            self._replace(ev.objects or {})
            return
        info = pod_info(ev.object or {})
        if info is None:
            return
        with self._lock:
            self._remove(info.key)
            if ev.type != EventType.DELETED:
                self._add(info)

    def _replace(self, objects: Mapping[Any, Mapping[str, Any]]) -> None:
        fresh = PodIndex(max_pods=self.max_pods)  # built unlocked: readers wait for the swap only
        for obj in objects.values():
            info = pod_info(obj)
            if info is not None:
                fresh._add(info)
        with self._lock:
            self.overflow += fresh.overflow
            self._pods, self._by_ip, self._placed = fresh._pods, fresh._by_ip, fresh._placed
            self._bound = fresh._bound
        event(log, "pod index synced", pods=len(fresh._pods), overflow=self.overflow)

    def _add(self, info: PodInfo) -> None:
        if len(self._pods) >= self.max_pods:
            self.overflow += 1
            return
        self._pods[info.key] = info
        if info.holds_ip:
            ip = _canonical(info.who.ip)
            self._by_ip[ip] = self._by_ip.get(ip, frozenset()) | {info.key}
        if info.who.node and info.who.phase not in TERMINAL:
            place = (info.who.node, info.who.namespace, info.who.workload)
            self._placed[place] = self._placed.get(place, 0) + 1
        if info.who.phase not in TERMINAL:
            bound = (info.who.namespace, info.who.workload, info.who.service_account)
            self._bound[bound] = self._bound.get(bound, 0) + 1

    def _remove(self, key: PodKey) -> None:
        old = self._pods.pop(key, None)
        if old is None:
            return
        if old.who.node and old.who.phase not in TERMINAL:
            place = (old.who.node, old.who.namespace, old.who.workload)
            left = self._placed.get(place, 0) - 1
            if left > 0:
                self._placed[place] = left
            else:
                self._placed.pop(place, None)
        if old.who.phase not in TERMINAL:
            _decrement(self._bound, (old.who.namespace, old.who.workload, old.who.service_account))
        if not old.holds_ip:
            return
        ip = _canonical(old.who.ip)
        rest = self._by_ip.get(ip, frozenset()) - {key}
        if rest:
            self._by_ip[ip] = rest
        else:
            self._by_ip.pop(ip, None)

    # ---- the watch ------------------------------------------------------------------------
    def start(self) -> None:
        from kubernetes import client

        from meshward.kube.watch import Watcher

        core = client.CoreV1Api(self.api_client)
        self._watcher = Watcher(core.list_pod_for_all_namespaces, name="serve-pods")

        def handle(ev: Any) -> None:
            self.apply(ev)
            self.synced.set()

        self._watcher.start(handle)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.join(5)
            self._watcher = None


def _decrement(counts: dict[tuple[str, str, str], int], key: tuple[str, str, str]) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _canonical(ip: str) -> str:
    """One spelling per address (IPv6 forms, IPv4-mapped IPv6); the text itself otherwise."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
