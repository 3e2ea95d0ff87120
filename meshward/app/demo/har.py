"""The demo shop's traffic as HAR files, for the README's offline quick start (`meshward demo
--write-har DIR`): a newcomer without recorded traffic of their own gets the calls the demo
sends through its ingress, as a browser or proxy would have saved them.

Only the HTTP calls that enter through the ingress (the gRPC calls between the shop's services
have no HAR form); each entry names its caller and callee (`_source`, `_destination`), as
docs/offline.md describes.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meshward.app.demo.traffic import Call, attack_calls, normal_calls, novel_calls

SOURCE = "istio-system/istio-ingressgateway"
HOST = "web.shop.svc.cluster.local"
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # fixed: the files are the same every time


def entry(call: Call, n: int) -> dict[str, Any]:
    """One HAR 1.2 entry for a call the ingress forwards to the shop's web service."""
    headers = [{"name": "host", "value": "shop.example.com"}]
    request: dict[str, Any] = {
        "method": call.method,
        "url": f"http://{HOST}{call.path}",
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers,
        "queryString": [],
        "headersSize": -1,
        "bodySize": 0,
    }
    if call.body is not None:
        text = json.dumps(call.body)
        headers.append({"name": "content-type", "value": "application/json"})
        request["postData"] = {"mimeType": "application/json", "text": text}
        request["bodySize"] = len(text.encode())
    when = START + timedelta(seconds=n)
    return {
        "startedDateTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": 2.0,
        "request": request,
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": "content-type", "value": "application/json"}],
            "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 2,
        },
        "cache": {},
        "timings": {"send": 0, "wait": 2, "receive": 0},
        "_source": SOURCE,
        "_destination": f"shop/{call.target}",
    }


def _write(path: Path, calls: list[Call], first: int) -> int:
    entries = [entry(c, first + i) for i, c in enumerate(calls) if c.via == "ingress"]
    creator = {"name": "meshward demo", "version": "1"}
    doc = {"log": {"version": "1.2", "creator": creator, "entries": entries}}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return len(entries)


def write_hars(directory: Path, requests: int = 400, seed: int = 7) -> dict[Path, int]:
    """normal.har (what shoppers do) and suspicious.har (more of it, then the demo's attacks
    and novel calls) in `directory`; returns how many entries each holds."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    normal = directory / "normal.har"
    suspicious = directory / "suspicious.har"
    return {
        normal: _write(normal, normal_calls(rng, requests), 0),
        suspicious: _write(
            suspicious, [*normal_calls(rng, 10), *attack_calls(), *novel_calls()], requests
        ),
    }
