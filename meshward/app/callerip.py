"""A plaintext caller seen by a node tap, named from serve's cluster pod index by its IP.

A node tap knows the pods of its own node; a caller on another node that did not come through
Linkerd's mTLS (no `l5d-client-id`, so no verified identity) reaches serve as an address only
(`Identity(ip=...)`). serve watches every Pod (meshward.app.podindex), so it can say which pod
held that address: the source gets that pod's namespace and workload, and the observation is
marked `extra["source_by"] = "pod-ip"` (with `extra["source_pod"] = "ns/name"`). The principal
stays empty: an address is not a verified identity, and the mark says so to whoever reads the
observation. An address no single live pod holds (a node, a hostNetwork pod, outside the
cluster, two pods claiming it) stays as it came.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol

from meshward.app.podindex import PodInfo
from meshward.core.observation import Identity
from meshward.runtime.metrics import Metrics

if TYPE_CHECKING:
    from meshward.app.pipeline import Call

SOURCE_BY = "source_by"
SOURCE_POD = "source_pod"
BY_POD_IP = "pod-ip"


class PodsByIp(Protocol):
    def by_ip(self, ip: str) -> PodInfo | None: ...


def known_only_by_ip(who: Identity) -> bool:
    """Nothing names this end but a routable address (loopback and unspecified name nobody)."""
    if who.namespace or who.workload or who.principal or not who.ip:
        return False
    try:
        addr = ipaddress.ip_address(who.ip.strip("[]"))
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


class CallerByIp:
    """Pipeline step (ingest door): a node tap's IP-only source -> the pod holding that IP."""

    def __init__(self, pods: PodsByIp, metrics: Metrics) -> None:
        self.pods = pods
        self._resolved = metrics.callers_by_ip.labels("resolved")
        self._unknown = metrics.callers_by_ip.labels("unknown")

    def ingest(self, call: Call) -> None:
        obs = call.obs
        if obs.seen_by != "node-tap" or not known_only_by_ip(obs.source):
            return
        pod = self.pods.by_ip(obs.source.ip)
        if pod is None:
            self._unknown.inc()
            return
        who = pod.who
        obs.source.namespace, obs.source.workload = who.namespace, who.workload
        obs.extra[SOURCE_BY] = BY_POD_IP
        obs.extra[SOURCE_POD] = f"{who.namespace}/{who.name}"
        self._resolved.inc()
