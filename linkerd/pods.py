"""Which pods Linkerd meshes, and who they are: facts read from Pod objects, nothing else.

A pod counts as meshed the way Linkerd's injector leaves it: it has the `linkerd-proxy`
container (classic sidecar), or the `linkerd-proxy` init container with `restartPolicy: Always`
(the native sidecar of Kubernetes 1.28+, which the 1.20 test server's schema cannot even hold),
or the `linkerd.io/inject: enabled` annotation on the pod or its namespace, unless the pod says
`linkerd.io/inject: disabled`. Pure functions over plain dicts (the API's JSON), so they run
the same on objects from a watch, a file or a test.

The workload is read from the pod itself, so a node agent needs no ReplicaSet reads: a
ReplicaSet owner's name less the pod's `pod-template-hash` is the Deployment; StatefulSet,
DaemonSet and Job owners are the workload directly; otherwise the `app.kubernetes.io/name` or
`app` label, else the pod's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROXY_CONTAINER = "linkerd-proxy"
INJECT_ANNOTATION = "linkerd.io/inject"
DIRECT_OWNERS = frozenset({"StatefulSet", "DaemonSet", "Job", "CronJob", "Deployment"})
CONTROL_PLANE_NAMESPACE = "linkerd"
TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class PodIdentity:
    """A meshed pod as the node agent tracks it."""

    namespace: str
    name: str
    workload: str
    service_account: str
    ip: str  # "" until the pod has one
    node: str
    phase: str

    def principal(self, trust_domain: str = TRUST_DOMAIN) -> str:
        """The identity Linkerd issues this pod (its service account's), spelled as
        linkerd-proxy writes it into `l5d-client-id` when the pod calls another: so the two
        ends of an exchange name the pod the same way."""
        return linkerd_identity(self.service_account, self.namespace, trust_domain)


def linkerd_identity(
    service_account: str,
    namespace: str,
    trust_domain: str = TRUST_DOMAIN,
    control_plane: str = CONTROL_PLANE_NAMESPACE,
) -> str:
    """`<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`."""
    return f"{service_account}.{namespace}.serviceaccount.identity.{control_plane}.{trust_domain}"


def _mapping(value: object) -> Mapping[str, Any]:
    """A field that should be an object, or {} (broken API objects must not crash the agent)."""
    return value if isinstance(value, Mapping) else {}


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(pod.get("metadata"))


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(pod.get("spec"))


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _mapping(_meta(obj).get("annotations")) if obj else {}


def _named(containers: object, name: str) -> list[Mapping[str, Any]]:
    if not isinstance(containers, list):
        return []
    return [c for c in containers if isinstance(c, Mapping) and c.get("name") == name]


def has_proxy(pod: Mapping[str, Any]) -> bool:
    """The proxy is there: a sidecar container, or a native-sidecar init container."""
    spec = _spec(pod)
    if _named(spec.get("containers"), PROXY_CONTAINER):
        return True
    return any(
        c.get("restartPolicy") == "Always"
        for c in _named(spec.get("initContainers"), PROXY_CONTAINER)
    )


def is_meshed(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None = None) -> bool:
    """Does Linkerd mesh this pod (see the module docstring)?"""
    pod_says = _annotations(pod).get(INJECT_ANNOTATION)
    if pod_says == "disabled":
        return False
    if has_proxy(pod):
        return True
    return pod_says == "enabled" or _annotations(namespace).get(INJECT_ANNOTATION) == "enabled"


def workload_of(pod: Mapping[str, Any]) -> str:
    """The pod's workload name (Deployment, StatefulSet, DaemonSet, ...) without API reads."""
    meta = _meta(pod)
    labels = _mapping(meta.get("labels"))
    owners = meta.get("ownerReferences")
    for owner in owners if isinstance(owners, list) else []:
        if not isinstance(owner, Mapping) or not owner.get("controller", True):
            continue
        kind, name = owner.get("kind"), owner.get("name")
        if not isinstance(name, str) or not name:
            continue
        if kind == "ReplicaSet":
            suffix = labels.get("pod-template-hash")
            if isinstance(suffix, str) and suffix and name.endswith("-" + suffix):
                return name[: -len(suffix) - 1]
            return name
        if kind in DIRECT_OWNERS:
            return name
    for key in ("app.kubernetes.io/name", "app"):
        value = labels.get(key)
        if isinstance(value, str) and value:
            return value
    name = meta.get("name")
    return name if isinstance(name, str) else ""


def identity(pod: Mapping[str, Any]) -> PodIdentity:
    """What the node agent keeps of a pod (missing fields become "")."""
    meta, spec = _meta(pod), _spec(pod)
    status = _mapping(pod.get("status"))

    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    return PodIdentity(
        namespace=text(meta.get("namespace")),
        name=text(meta.get("name")),
        workload=workload_of(pod),
        service_account=text(spec.get("serviceAccountName")) or "default",
        ip=text(status.get("podIP")),
        node=text(spec.get("nodeName")),
        phase=text(status.get("phase")),
    )


def running(pod: Mapping[str, Any]) -> bool:
    """Running, with an IP, not being deleted: a pod whose network namespace can be captured."""
    who = identity(pod)
    deleting = bool(_meta(pod).get("deletionTimestamp"))
    return who.phase == "Running" and bool(who.ip) and not deleting


def capturable(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None = None) -> bool:
    """Attach a capture now: meshed, Running, with an IP, not being deleted."""
    return is_meshed(pod, namespace) and running(pod)
