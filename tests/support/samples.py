"""Small HAR and Envoy tap inputs built in code, shared by the format and CLI tests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any


def har_entry(
    method: str = "GET",
    url: str = "http://api.shop.svc.cluster.local:8080/users/42?verbose=1",
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
    mime: str = "application/json",
    status: int = 200,
    source: str | None = None,
    destination: str | None = None,
    started: str = "2026-11-24T10:00:00.000Z",
) -> dict[str, Any]:
    req: dict[str, Any] = {
        "method": method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": [{"name": k, "value": v} for k, v in (headers or {}).items()],
        "queryString": [],
        "headersSize": -1,
        "bodySize": len(body.encode()) if body is not None else 0,
    }
    if body is not None:
        req["postData"] = {"mimeType": mime, "text": body}
    entry: dict[str, Any] = {
        "startedDateTime": started,
        "time": 1.5,
        "request": req,
        "response": {
            "status": status,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": "Content-Type", "value": "application/json"}],
            "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 2,
        },
        "cache": {},
        "timings": {"send": 0, "wait": 1, "receive": 0},
    }
    if source is not None:
        entry["_source"] = source
    if destination is not None:
        entry["_destination"] = destination
    return entry


def har_doc(entries: list[Any]) -> dict[str, Any]:
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "meshward-tests", "version": "1"},
            "entries": entries,
        }
    }


def write_har(path: Path, entries: list[Any], indent: int | None = 1) -> Path:
    path.write_text(json.dumps(har_doc(entries), indent=indent))
    return path


def tap_trace(
    method: str = "GET",
    path: str = "/users/42?verbose=1",
    authority: str = "api.shop.svc.cluster.local:8080",
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    as_string: bool = False,
    truncated: bool = False,
    status: int = 200,
) -> dict[str, Any]:
    hdrs = [
        {"key": ":authority", "value": authority, "raw_value": ""},
        {"key": ":path", "value": path, "raw_value": ""},
        {"key": ":method", "value": method, "raw_value": ""},
        {"key": ":scheme", "value": "http", "raw_value": ""},
    ] + [{"key": k, "value": v, "raw_value": ""} for k, v in (headers or {}).items()]
    req: dict[str, Any] = {"headers": hdrs, "trailers": []}
    if body is not None:
        req["body"] = (
            {"as_string": body.decode(), "truncated": truncated}
            if as_string
            else {"as_bytes": base64.b64encode(body).decode(), "truncated": truncated}
        )
    return {
        "http_buffered_trace": {
            "request": req,
            "response": {
                "headers": [{"key": ":status", "value": str(status), "raw_value": ""}],
                "trailers": [],
            },
        }
    }
