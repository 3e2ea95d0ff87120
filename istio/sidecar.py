"""Whether a Pod carries Istio's sidecar, as the injector leaves it (no API reads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROXY_CONTAINER = "istio-proxy"
# written by the injector on every pod it injects (the containers, volumes and template revision)
STATUS_ANNOTATION = "sidecar.istio.io/status"


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """An `istio-proxy` container, or the native sidecar (an init container of that name with
    `restartPolicy: Always`, Istio 1.19+ on Kubernetes 1.28+)."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return False

    def named(key: str) -> list[Mapping[str, Any]]:
        found = spec.get(key)
        if not isinstance(found, list):
            return []
        return [c for c in found if isinstance(c, Mapping) and c.get("name") == PROXY_CONTAINER]

    if named("containers"):
        return True
    return any(c.get("restartPolicy") == "Always" for c in named("initContainers"))


def is_injected(pod: Mapping[str, Any]) -> bool:
    """The sidecar is there, or the injector says it injected the pod (`sidecar.istio.io/status`):
    a pod whose proxy container was taken out again still counts, so traffic reaching its app
    around a proxy that is not there is seen as the bypass it is."""
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if isinstance(annotations, Mapping) and annotations.get(STATUS_ANNOTATION):
        return True
    return has_sidecar(pod)
