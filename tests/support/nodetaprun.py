"""A NodeTap's packet loop in a thread for the node tests, and Pod objects run on the real API
server the way a kubelet would leave them."""

from __future__ import annotations

import json
import threading
from typing import Any

from meshward.core.observation import Observation
from meshward.tap.node.pipeline import NodeTap
from tests.support.apiserver import KubeCluster


class Running:
    """A NodeTap's packet loop in a thread, collecting what it hands out."""

    def __init__(self, tap: NodeTap) -> None:
        self.tap = tap
        self.seen: list[Observation] = []
        self.lock = threading.Lock()
        tap.out = self._out
        self.stop = threading.Event()
        tap.open()
        self.thread = threading.Thread(target=tap.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def _out(self, obs: Observation) -> None:
        with self.lock:
            self.seen.append(obs)

    def alerts(self, name: str) -> list[Observation]:
        with self.lock:
            return [o for o in self.seen if o.threats and o.threats[0].name == name]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.tap.close()


def pod_object(
    name: str,
    ns: str,
    node: str,
    containers: list[str],
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": f"{c}:1"} for c in containers],
        },
    }


def run_pod(kube: KubeCluster, obj: dict[str, Any], ip: str) -> None:
    """Create the Pod and set what a kubelet would: Running, with its IP."""
    kube.kubectl("apply", "-f", "-", input=json.dumps(obj))
    status = {"status": {"phase": "Running", "podIP": ip}}
    meta = obj["metadata"]
    kube.kubectl(
        "patch",
        "pod",
        meta["name"],
        "-n",
        meta["namespace"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
