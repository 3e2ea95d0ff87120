"""Kubernetes client layer: config loading, watch-with-relist, Lease leader election, errors.

This is meshward's only I/O boundary to the Kubernetes API. It imports the `kubernetes` client
(pinned in pyproject.toml) and the standard library, nothing else from meshward, so the
controller, the cluster store and the node agent can all build on it. Logging goes to the
stdlib logger "meshward.kube". See docs/kubernetes.md.
"""

from meshward.kube.config import in_cluster_namespace, load_client, token_client
from meshward.kube.errors import (
    KubeConfigError,
    KubeError,
    KubeForbidden,
    KubeUnauthorized,
    KubeUnavailable,
    describe,
    from_api_exception,
    translate_errors,
)
from meshward.kube.leader import LeaderElector
from meshward.kube.watch import Event, EventType, Watcher

__all__ = [
    "Event",
    "EventType",
    "KubeConfigError",
    "KubeError",
    "KubeForbidden",
    "KubeUnauthorized",
    "KubeUnavailable",
    "LeaderElector",
    "Watcher",
    "describe",
    "from_api_exception",
    "in_cluster_namespace",
    "load_client",
    "token_client",
    "translate_errors",
]
