"""A node tap speaks only for the pods on its own node (ingest in a cluster).

The node tap authenticates with its pod-bound ServiceAccount token. TokenReview of such a token
gives the pod (`authentication.kubernetes.io/pod-name` and `pod-uid` in the user's extra; the
API server checked that this pod exists), the pod index gives that pod's `spec.nodeName`, and
every observation in the batch must have its destination on that node (control-plane
traffic, judged where the client runs, its source):

- a destination IP (not loopback or unspecified: the node tap captures pods' loopback, where
  the server address is 127.0.0.1) must be the pod IP of one live pod on that node, whose
  namespace and workload match the destination's when it names them;
- otherwise the destination's namespace/workload must have a live pod on that node.

Anything else is refused and counted: a compromised node (or a stolen node-tap token) can lie
about its own pods, not about the rest of the cluster's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshward.app.auth import AuthConfig, Principal
from meshward.app.podindex import PodIndex
from meshward.core.controlplane import judged_client_side
from meshward.core.observation import Observation
from meshward.kube.review import POD_NAME_EXTRA, POD_UID_EXTRA, UserInfo


class ScopeError(Exception):
    """The caller cannot ingest at all: `status` is the HTTP answer (403, or 503 while the pod
    index has not synced)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class NodeScope:
    pods: PodIndex

    def node_of(self, principal: Principal | None) -> str:
        """The node `principal` may speak for; ScopeError when there is none."""
        who = principal.name if principal else ""
        sa = UserInfo(who).service_account
        pod_name = principal.extra_value(POD_NAME_EXTRA) if principal else ""
        if sa is None or not pod_name:
            raise ScopeError(
                403,
                "ingest in a cluster needs a pod-bound ServiceAccount token (the node tap's "
                f"projected token); {who or 'this caller'} has none",
            )
        if not self.pods.synced.is_set():
            raise ScopeError(503, "the pod index has not synced yet; retry")
        pod = self.pods.get(sa[0], pod_name)
        uid = principal.extra_value(POD_UID_EXTRA) if principal else ""
        if (
            pod is None
            or (uid and pod.uid != uid)
            or pod.who.service_account != sa[1]
            or not pod.who.node
        ):
            raise ScopeError(403, f"the token's pod {sa[0]}/{pod_name} is not on a known node")
        return pod.who.node

    def allows(self, obs: Observation, node: str) -> bool:
        """Whether the observation's destination is a pod on `node`; for control-plane
        traffic, its source (judged where the client pod runs: meshward.core.controlplane)."""
        return self.allows_key(scope_key(obs), node)

    def allows_key(self, key: ScopeKey, node: str) -> bool:
        """`allows` of every observation with this `scope_key`."""
        ip, namespace, workload = key
        if _routable(ip):
            pod = self.pods.by_ip(ip)
            return (
                pod is not None
                and pod.who.node == node
                and namespace in ("", pod.who.namespace)
                and workload in ("", pod.who.workload)
            )
        return bool(namespace and workload) and self.pods.on_node(node, namespace, workload)


ScopeKey = tuple[str, str, str]  # (ip, namespace, workload) of the end a node tap speaks for


def scope_key(obs: Observation) -> ScopeKey:
    """All `NodeScope.allows` reads of an observation: the end it speaks for (the destination;
    for control-plane traffic the source)."""
    who = obs.source if judged_client_side(obs) else obs.destination
    return who.ip, who.namespace, who.workload


def _routable(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


def cluster_pods(config: AuthConfig) -> tuple[PodIndex | None, NodeScope | None]:
    """With Kubernetes authentication: serve's pod index (started with serve) and the node
    scope of ingest over it; (None, None) standalone."""
    if not config.kubernetes:
        return None, None
    from meshward.kube.config import load_client

    pods = PodIndex(load_client(config.kubeconfig))
    return pods, NodeScope(pods)
