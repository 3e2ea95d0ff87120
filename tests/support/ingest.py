"""Big ingest batches, for the ingest tests and bench/ingest_load.py."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any


def big_batch(n: int = 10_000, body_bytes: int = 1_000) -> bytes:
    """About 16 MB of JSON Lines: n observations with JSON bodies (base64)."""
    lines = []
    for i in range(n):
        body = json.dumps({"id": i, "note": "x" * body_bytes}).encode()
        lines.append(
            json.dumps(
                {
                    "seen_by": "node-tap",
                    "source": {"namespace": "shop", "workload": "web"},
                    "destination": {"namespace": "shop", "workload": "api"},
                    "method": "POST",
                    "path": f"/api/orders/{i}",
                    "headers": [["content-type", "application/json"]],
                    "body_b64": base64.b64encode(body).decode(),
                }
            )
        )
    return "\n".join(lines).encode()


def item(ns: str, i: int, **kw: Any) -> dict[str, Any]:
    body = kw.pop("body", json.dumps({"id": i, "note": "n" * (i % 7), "ok": i % 2 == 0}).encode())
    return {
        "seen_by": "node-tap",
        "time": 1_700_000_000.0 + i,
        "source": {"namespace": "shop", "workload": f"web{i % 3}"},
        "destination": {"namespace": ns, "workload": "api"},
        "method": "POST" if i % 4 else "GET",
        "path": f"/api/orders/{i}" if i % 5 else f"/api/item-{i % 23}/x",
        "query": f"page={i}&q=abc" if i % 3 else "",
        "headers": [["content-type", "application/json"]],
        "body_b64": base64.b64encode(body).decode(),
        **kw,
    }


def mixed_batch() -> list[dict[str, Any]]:
    """Every way the loop's judging may go: learning (literals generalised past the
    cardinality bound), scoring in monitor and enforce, threats, client-claimed threats,
    compressed and cut bodies, form and broken bodies, envoy-tap copies."""
    items = []
    for ns in ("learnns", "mon", "enf"):
        for i in range(60):
            items.append(item(ns, i))
        items.append(item(ns, 900, query="id=1' OR '1'='1"))  # a threat
        items.append(item(ns, 901, body=b'{"q": "<script>alert(1)</script>"}'))
        items.append(
            item(ns, 902, threats=[{"name": "SQL.Injection", "location": "q", "evidence": "x"}])
        )
        items.append(
            item(
                ns,
                903,
                body=gzip.compress(json.dumps({"big": "z" * 5000}).encode()),
                headers=[["content-type", "application/json"], ["content-encoding", "gzip"]],
            )
        )
        items.append(
            item(
                ns,
                907,
                body=gzip.compress(b"plain text " * 500),
                headers=[["content-type", "text/plain"], ["content-encoding", "gzip"]],
            )
        )
        items.append(item(ns, 904, body=b"a=1&b=two", headers=[["content-type", FORM]]))
        items.append(item(ns, 905, body=b'{"broken": ', body_truncated=True))
        items.append(item(ns, 906, seen_by="envoy-tap", direction="inbound"))
    return items


FORM = "application/x-www-form-urlencoded"
