"""The cost of naming users from the API server's audit log (one run, seconds, no cluster needed).

The controller's audit webhook reads every batch the API server posts and keeps the writes of
the guarded kinds; each finding then looks its write up. Measured in the same run, against
baselines of the same data:

1. **A batch**: one EventList of 400 Events (the API server's default batch size), handled as
   the port does (`events_of`, `MeshGuard.add_audit`: read, skip, keep), against `json.loads` of
   the same body (the floor: the port must parse it anyway), as a ratio; rounds alternate and
   the spread is printed. Two mixes: the shipped policy's (all writes of guarded kinds) and a
   broad cluster policy's (nine in ten Events reads or other kinds, skipped).
2. **One join**: `Authors.find` for a change with 20,000 records kept (the bound), p50 µs.
3. **Memory**: what 20,000 kept records take (tracemalloc) against the Events' JSON.

    .venv/bin/python bench/audit_join.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshward.app.ingest import loads
from meshward.app.meshguard import MeshGuard
from meshward.core.kubeaudit import Authors, Change, events_of, record_of, timestamp

BATCH = 400


def write(i: int, when: str, read: bool = False) -> dict[str, Any]:
    """A PeerAuthentication patch at RequestResponse level, as v1.20 logs it (or a read)."""
    ns, name = f"ns-{i % 500}", f"pa-{i}"
    obj = {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"{i:08x}-1111-2222-3333-444455556666",
            "resourceVersion": str(100_000 + i),
            "generation": 2,
            "creationTimestamp": when,
            "managedFields": [
                {
                    "manager": "kubectl-patch",
                    "operation": "Update",
                    "apiVersion": "security.istio.io/v1beta1",
                    "time": when,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {".": {}, "f:mtls": {".": {}, "f:mode": {}}}},
                }
            ],
        },
        "spec": {"mtls": {"mode": "PERMISSIVE"}},
    }
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": f"{i:08x}-aaaa-bbbb-cccc-dddddddddddd",
        "stage": "ResponseComplete",
        "requestURI": f"/apis/security.istio.io/v1beta1/namespaces/{ns}/peerauthentications/{name}",
        "verb": "get" if read else "patch",
        "user": {
            "username": f"user-{i % 40}@example.com",
            "uid": f"uid-{i % 40}",
            "groups": ["developers", "system:authenticated"],
        },
        "sourceIPs": ["10.0.3.7"],
        "userAgent": "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07",
        "objectRef": {
            "resource": "peerauthentications",
            "namespace": ns,
            "name": name,
            "apiGroup": "security.istio.io",
            "apiVersion": "v1beta1",
        },
        "responseStatus": {"metadata": {}, "code": 200},
        "requestObject": {"spec": {"mtls": {"mode": "PERMISSIVE"}}},
        "responseObject": obj,
        "requestReceivedTimestamp": when,
        "stageTimestamp": when,
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": "",
        },
    }


def body(start: int, read_share: int, when: str) -> bytes:
    items = [
        write(start + i, when, read=read_share > 0 and i % 10 < read_share) for i in range(BATCH)
    ]
    return json.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}
    ).encode()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x (rounds {min(values):.2f}-{max(values):.2f}x)"


def batches(rounds: int, read_share: int, label: str, repeat: int = 5) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ratios, per_event = [], []
    guard = MeshGuard(None, authors=Authors())
    for r in range(rounds):
        raw = [body((r * repeat + k) * BATCH, read_share, when) for k in range(repeat)]
        floor = took = 0.0
        for one in raw:  # alternating: the baseline and the measured see the same machine
            t0 = time.perf_counter()
            json.loads(one)
            floor += time.perf_counter() - t0
            t0 = time.perf_counter()
            guard.add_audit(events_of(loads(one)))
            took += time.perf_counter() - t0
        ratios.append(took / floor)
        per_event.append(took / (BATCH * repeat) * 1e6)
    size = len(body(0, read_share, when)) / 1024
    print(
        f"batch of {BATCH} ({label}, {size:.0f} KiB): {statistics.median(per_event):.1f} µs an "
        f"Event; {spread(ratios)} of json.loads alone"
    )


def joins() -> None:
    now = time.time()
    when = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    authors = Authors()
    docs = [write(i, when) for i in range(authors.size)]
    raw_size = sum(len(json.dumps(d)) for d in docs)
    records = [record_of(d) for d in docs]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for rec in records:
        authors.add(rec, now)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    times = []
    for i in range(0, authors.size, 7):
        change = Change(
            "security.istio.io",
            "peerauthentications",
            f"ns-{i % 500}",
            f"pa-{i}",
            deleted=False,
            seen=timestamp(when) + 0.05,
            resource_version=str(100_000 + i),
        )
        t0 = time.perf_counter()
        found, _ = authors.find(change)
        times.append(time.perf_counter() - t0)
        assert found is not None
    times.sort()
    print(
        f"join: {len(authors):,} records kept; find p50 {times[len(times) // 2] * 1e6:.1f} µs, "
        f"p99 {times[int(len(times) * 0.99)] * 1e6:.1f} µs"
    )
    print(
        f"memory: {kept / len(authors):.0f} B a record (index included; records share the "
        f"Events' strings) against {raw_size / len(authors):.0f} B of Event JSON "
        f"({kept / raw_size:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    batches(args.rounds, 0, "the shipped policy: all kept")
    batches(args.rounds, 9, "a broad policy: 9 in 10 skipped")
    joins()


if __name__ == "__main__":
    main()
