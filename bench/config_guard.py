"""The mesh guard's cost on a big cluster (one run, seconds, no cluster needed).

The guard's pod watch lists every running pod when the controller starts (and on every relist),
then follows each change. Measured in the same run, against baselines of the same data:

1. **Relist time**: the guard's handling of one SYNC of N running pods (projection, rules, diff,
   dedup) against `json.loads` of the same list's JSON (what the watch itself must pay to read
   it: the floor), as a ratio; rounds alternate and the spread is printed.
2. **One change**: a pod's MODIFIED event handled (p50, µs), against `json.loads` of that pod.
3. **Memory**: what the guard keeps per pod (tracemalloc growth of its views after the SYNC)
   against the full pod objects as the API sends them (the naive cache), as a ratio.

Pods are realistic Deployment pods (labels, annotations, env, probes, volumes, managedFields of
the controller manager, the scheduler and the kubelet); a tenth have no sidecar (each a finding).

    .venv/bin/python bench/config_guard.py [--pods 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client

from meshward.app.meshguard import PODS, MeshGuard
from meshward.kube.watch import Event, EventType


def pod(i: int, ns: str) -> dict[str, Any]:
    meshed = i % 10 != 0
    containers = [
        {
            "name": "app",
            "image": f"registry.example/team/app:{i % 50}",
            "env": [{"name": f"VAR_{k}", "value": f"value-{k}-{i}"} for k in range(12)],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}],
        }
    ]
    if meshed:
        containers.append(
            {"name": "istio-proxy", "image": "istio/proxyv2:1.24", "args": ["proxy"] * 8}
        )
    managed = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "time": "2026-12-06T07:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}, "f:pod-template-hash": {}}},
                "f:spec": {"f:containers": {'k:{"name":"app"}': {"f:env": {}, "f:image": {}}}},
            },
        },
        {
            "manager": "kubelet",
            "operation": "Update",
            "time": "2026-12-06T07:00:05Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:phase": {}, "f:podIP": {}, "f:conditions": {}}},
            "subresource": "status",
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"app-{i}",
            "namespace": ns,
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": str(1000 + i),
            "labels": {"app": f"app-{i % 200}", "pod-template-hash": "5d9f8c7b6"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "kubectl.kubernetes.io/restartedAt": "x",
            },
            "ownerReferences": [
                {"kind": "ReplicaSet", "name": f"app-{i % 200}-5d9f8c7b6", "uid": "r"}
            ],
            "managedFields": managed,
        },
        "spec": {
            "nodeName": f"node-{i % 40}",
            "containers": containers,
            "volumes": [{"name": "config", "configMap": {"name": "app"}}],
            "serviceAccountName": "app",
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "conditions": [{"type": t, "status": "True"} for t in ("Ready", "Initialized")],
        },
    }


def make(n: int) -> tuple[dict[tuple[str, str], dict[str, Any]], bytes]:
    pods = [pod(i, f"ns-{i % 100}") for i in range(n)]
    raw = json.dumps({"kind": "PodList", "items": pods}).encode()
    return {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}, raw


def guard_for() -> MeshGuard:
    g = MeshGuard(client.ApiClient())
    namespaces = {
        ("", f"ns-{k}"): {
            "metadata": {"name": f"ns-{k}", "labels": {"meshward.io/mode": "enforce"}}
        }
        for k in range(100)
    }
    g.on_namespace(Event(EventType.SYNC, objects=namespaces))
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    _, raw = make(args.pods)
    relist, parse = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        body = json.loads(raw)
        parse.append(time.perf_counter() - t)
        objects = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in body["items"]}
        g = guard_for()
        t = time.perf_counter()
        g.handler(PODS)(Event(EventType.SYNC, objects=objects))
        relist.append(time.perf_counter() - t)
    findings = len(g._out)
    ratios = [r / p for r, p in zip(relist, parse, strict=True)]
    print(f"pods: {args.pods}, findings at start: {findings} (a tenth have no sidecar)")
    print(
        f"relist: guard {statistics.median(relist) * 1000:.0f} ms, json.loads of the list "
        f"{statistics.median(parse) * 1000:.0f} ms: {statistics.median(ratios):.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    # one change: a label edit of a meshed pod
    one = pod(1, "ns-1")
    one_raw = json.dumps(one).encode()
    handle = g.handler(PODS)
    per_event, per_parse = [], []
    for k in range(2000):
        t = time.perf_counter()
        obj = json.loads(one_raw)
        per_parse.append(time.perf_counter() - t)
        obj["metadata"]["labels"]["n"] = str(k)
        t = time.perf_counter()
        handle(Event(EventType.MODIFIED, object=obj))
        per_event.append(time.perf_counter() - t)
    e50, p50 = statistics.median(per_event) * 1e6, statistics.median(per_parse) * 1e6
    print(
        f"one change: guard p50 {e50:.0f} us, json.loads of the pod p50 {p50:.0f} us: "
        f"{e50 / p50:.2f}x"
    )
    # memory: the guard's views against the full objects
    objects, _ = make(args.pods)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    full = json.loads(json.dumps(list(objects.values())))
    full_bytes = tracemalloc.get_traced_memory()[0] - base
    del full
    g = guard_for()
    base = tracemalloc.get_traced_memory()[0]
    g.handler(PODS)(Event(EventType.SYNC, objects=objects))
    g._out.clear()  # the findings queue is bounded apart; the views are what stays
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(
        f"memory: guard keeps {kept / args.pods:.0f} B per pod, the full objects take "
        f"{full_bytes / args.pods:.0f} B: {kept / full_bytes:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
