"""The node agent's view for the control-plane watch (meshward.tap.node.controlplane): where
the mesh's control plane listens, and who the pods of this node are.

- control-plane endpoints: Pods and Services labelled as istiod (`app=istiod`) or as a Linkerd
  component (`linkerd.io/control-plane-component`), cluster-wide but only those (label-selected
  watches: a handful of objects, not the cluster's pods), keyed (address, port): each Pod IP
  with its component's ports, each Service's cluster IP with its ports that forward to one;
- clients: the pods of this node (fed by the node agent's own pod watch), by IP, with whether
  a sidecar (Istio's or Linkerd's) runs in them. hostNetwork pods hold the node's address and
  are not clients by IP.

The watch threads write; the packet loop reads. Each update builds fresh dicts and swaps them
in (atomic under the GIL), so a reader never sees half a change.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from meshward.core.controlplane import SELECTORS, Endpoint, component_of, service_ports
from meshward.core.log import event
from meshward.core.observation import Identity
from meshward.istio.sidecar import has_sidecar as istio_sidecar
from meshward.linkerd.pods import has_proxy as linkerd_proxy
from meshward.linkerd.pods import identity
from meshward.tap.node.controlplane import Client

log = logging.getLogger("meshward.node-agent")
Key = tuple[str, str]
Objects = Mapping[Key, Mapping[str, Any]]


def _labels(obj: Mapping[str, Any]) -> object:
    meta = obj.get("metadata")
    return meta.get("labels") if isinstance(meta, Mapping) else None


def pod_endpoints(pod: Mapping[str, Any]) -> dict[tuple[str, int], Endpoint]:
    """A control-plane Pod's (IP, port) -> Endpoint, for its component's ports."""
    part = component_of(_labels(pod))
    who = identity(pod)
    if part is None or not who.ip or who.phase in ("Succeeded", "Failed"):
        return {}
    return {
        (who.ip, port): Endpoint(part.mesh, part.name, port, purpose, who.namespace, who.workload)
        for port, purpose in part.ports.items()
    }


def service_endpoints(svc: Mapping[str, Any]) -> dict[tuple[str, int], Endpoint]:
    """A control-plane Service's (cluster IP, port) -> Endpoint of the port it forwards to,
    named after the component's Deployment."""
    part = component_of(_labels(svc))
    meta, spec = svc.get("metadata"), svc.get("spec")
    if part is None or not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        return {}
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    ips = [ip for ip in ips if isinstance(ip, str) and ip and ip != "None"]
    ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    # named as the Deployment behind it: istiod's Service shares its Deployment's name (also
    # per revision, istiod-<rev>); Linkerd's (linkerd-dst, linkerd-policy) front the
    # linkerd-<component> Deployments
    name = meta.get("name") if isinstance(meta.get("name"), str) else "istiod"
    workload = str(name) if part.mesh == "istio" else f"linkerd-{part.name}"
    out = {}
    for port, target in service_ports(spec, part).items():
        for ip in ips:
            out[(ip, port)] = Endpoint(
                part.mesh, part.name, target, part.ports[target], str(ns), workload
            )
    return out


def client(pod: Mapping[str, Any]) -> tuple[str, Client] | None:
    """A pod of this node as a control-plane client: (its IP, Client), None without an IP."""
    who = identity(pod)
    spec = pod.get("spec")
    host = isinstance(spec, Mapping) and spec.get("hostNetwork") is True
    if not who.ip or host or who.phase in ("Succeeded", "Failed"):
        return None
    sidecar = linkerd_proxy(pod) or istio_sidecar(pod)
    return who.ip, Client(Identity(who.namespace, who.workload), sidecar)


class ControlPlaneView:
    """`endpoint_of` and `client_of` for ControlPlaneMonitor, kept current by watches."""

    def __init__(self) -> None:
        # what each watch saw (one per selector and kind): a relist replaces its own part only
        self._seen: dict[str, dict[Key, Mapping[str, Any]]] = {}
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._clients: dict[str, Client] = {}
        self._watchers: list[Any] = []

    # ---- reading (the packet loop)
    def endpoint_of(self, ip: str, port: int) -> Endpoint | None:
        return self._endpoints.get((ip, port))

    def client_of(self, ip: str) -> Client | None:
        return self._clients.get(ip)

    def control_plane(self) -> list[Endpoint]:
        return sorted(set(self._endpoints.values()), key=lambda e: (e.key, e.port))

    # ---- writing (watch threads)
    def set_local_pods(self, pods: Objects) -> None:
        """This node's pods (the node agent's pod view after each change)."""
        clients: dict[str, Client] = {}
        for pod in pods.values():
            found = client(pod)
            if found is not None:
                clients[found[0]] = found[1]
        self._clients = clients

    def apply(self, source: str, ev: Any) -> None:
        """One watch event of `source` ("pods-..." or "services-..."): a SYNC replaces what
        that source saw, the others change one object."""
        into = self._seen.setdefault(source, {})
        if ev.type == "SYNC":
            into = self._seen[source] = dict(ev.objects or {})
        elif ev.object is not None:
            meta = ev.object.get("metadata", {})
            key = (meta.get("namespace", ""), meta.get("name", ""))
            if ev.type == "DELETED":
                into.pop(key, None)
            else:
                into[key] = ev.object
        self._rebuild()

    def _rebuild(self) -> None:
        endpoints: dict[tuple[str, int], Endpoint] = {}
        for source, objects in list(self._seen.items()):
            find = service_endpoints if source.startswith("services") else pod_endpoints
            for obj in list(objects.values()):
                endpoints.update(find(obj))
        if set(endpoints.values()) != set(self._endpoints.values()):
            comps = sorted({f"{e.key}:{e.port}" for e in endpoints.values()})
            event(log, "control plane", endpoints=len(endpoints), components=comps[:32])
        self._endpoints = endpoints

    def start(self, api_client: Any) -> None:
        """Label-selected watches of control-plane Pods and Services, every namespace."""
        from kubernetes import client as k8s

        from meshward.kube.watch import Watcher

        core = k8s.CoreV1Api(api_client)
        for i, selector in enumerate(SELECTORS):
            for list_fn, what in (
                (core.list_pod_for_all_namespaces, "pods"),
                (core.list_service_for_all_namespaces, "services"),
            ):
                source = f"{what}-{i}"
                w = Watcher(list_fn, label_selector=selector, name=f"control-plane-{source}")
                w.start(functools.partial(self.apply, source))
                self._watchers.append(w)

    def synced(self) -> bool:
        return bool(self._watchers) and all(w.synced.is_set() for w in self._watchers)

    def stop(self) -> None:
        for w in self._watchers:
            w.stop()
        for w in self._watchers:
            w.join(5)
        self._watchers.clear()
