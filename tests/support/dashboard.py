"""Traffic for the dashboard's tests: observations posted to serve's API, as a node tap would."""

from __future__ import annotations

import json
from typing import Any

from meshward.core.observation import Identity, Observation, observation_to_dict

# caller -> (service, method, path): a shop calling its api and db, and another namespace
CALLS = [
    ("shop/web", "shop/api", "GET", "/users/1"),
    ("shop/web", "shop/api", "GET", "/users/2"),
    ("shop/web", "shop/api", "POST", "/orders"),
    ("shop/api", "shop/db", "GET", "/rows/7"),
    ("billing/worker", "shop/api", "GET", "/invoices/3"),
]


def call(source: str, destination: str, method: str, path: str, query: str = "") -> dict[str, Any]:
    src_ns, _, src = source.partition("/")
    dst_ns, _, dst = destination.partition("/")
    return observation_to_dict(
        Observation(
            seen_by="node-tap",
            source=Identity(src_ns, src),
            destination=Identity(dst_ns, dst),
            method=method,
            path=path,
            query=query,
            status=200,
        )
    )


def learned_calls(repeat: int = 3) -> list[dict[str, Any]]:
    """The CALLS, each `repeat` times (enough for the allowlist to learn their templates)."""
    return [call(*c) for _ in range(repeat) for c in CALLS]


def har(calls: list[tuple[str, str, str, str]]) -> bytes:
    """A HAR 1.2 file of (caller, service, method, path) requests, naming both ends as a
    recorded mesh call does (`_source`, `_destination`)."""
    entries = [
        {
            "startedDateTime": "2026-01-01T00:00:00Z",
            "_source": source,
            "_destination": destination,
            "request": {
                "method": method,
                "url": f"http://{destination.split('/')[1]}{path}",
                "httpVersion": "HTTP/1.1",
                "headers": [],
                "queryString": [],
            },
            "response": {"status": 200, "headers": []},
        }
        for source, destination, method, path in calls
    ]
    return json.dumps({"log": {"version": "1.2", "entries": entries}}).encode()
