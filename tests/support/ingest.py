"""Big ingest batches, for the ingest tests and bench/ingest_load.py."""

from __future__ import annotations

import base64
import json


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
