"""HAR 1.2 (HTTP Archive) files as Observations.

Entries are streamed (ijson) so a large archive is never held whole. An entry may name its caller
and callee with `_source` / `_destination` identity strings (SPIFFE, Linkerd, service DNS,
`ns/name`); otherwise the destination is the request's authority (Host header, HTTP/2
`:authority`, else the URL's host) and the source is the SPIFFE id in x-forwarded-client-cert
when present, else unknown.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator
from typing import IO
from urllib.parse import urlencode, urlsplit

import ijson

from meshward.core.observation import Identity, Observation, SeenBy, whole_text
from meshward.formats.common import (
    BAD_VALUE,
    JSON_ERRORS,
    DepthGuard,
    EntryError,
    Item,
    at_entry,
    content_length,
    describe,
    destination_from_authority,
    json_error,
    normalize_protocol,
    parse_time,
    require_object,
    source_from_xfcc,
    split_pseudo,
)


def _str(value: object, what: str) -> str:
    if value is None:
        raise ValueError(f"{what} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _headers(value: object, what: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """HAR name/value list -> (lower-cased headers, HTTP/2 pseudo-headers kept apart)."""
    if value is None:
        return [], {}
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    pairs: list[tuple[str, str]] = []
    for i, h in enumerate(value):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str):
            raise ValueError(f"{what}[{i}] must be an object with a string name")
        v = h.get("value", "")
        if not isinstance(v, (str, int, float)):
            raise ValueError(f"{what}[{i}].value must be a string")
        pairs.append((h["name"], str(v)))
    return split_pseudo(pairs)


def _body(post: object) -> bytes:
    """postData.text (base64 when `encoding: base64`), else its form `params`."""
    if post is None:
        return b""
    post = require_object(post, "request.postData")
    text = post.get("text")
    if text is not None:
        text = _str(text, "request.postData.text")
        if str(post.get("encoding", "")).lower() == "base64":
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("request.postData.text is not valid base64") from exc
        return text.encode("utf-8", "surrogatepass")
    params = post.get("params")
    if isinstance(params, list):
        pairs = [
            (str(p.get("name", "")), str(p.get("value", ""))) for p in params if isinstance(p, dict)
        ]
        return urlencode(pairs).encode("ascii")
    return b""


def observation_from_entry(entry: object, seen_by: SeenBy = "file") -> Observation:
    """One HAR entry -> one Observation; ValueError with a one-line reason when malformed."""
    entry = require_object(entry, "entry")
    req = require_object(entry.get("request"), "request")
    method = _str(req.get("method"), "request.method").strip()
    if not method:
        raise ValueError("request.method is empty")
    url = _str(req.get("url"), "request.url").strip()
    if not url:
        raise ValueError("request.url is empty")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"request.url is not a URL: {exc}") from exc
    headers, pseudo = _headers(req.get("headers"), "request.headers")
    authority = ""
    for name, value in headers:
        if name == "host":
            authority = value
            break
    authority = authority or pseudo.get(":authority", "") or parts.netloc.rpartition("@")[2]

    body = _body(req.get("postData"))
    declared = content_length(headers)
    har_size = req.get("bodySize")
    if declared is None and isinstance(har_size, int) and har_size >= len(body):
        declared = har_size if har_size > 0 or not body else None
    if declared is None and body:
        declared = len(body)

    resp = entry.get("response")
    status: int | None = None
    resp_headers: list[tuple[str, str]] = []
    if resp is not None:
        resp = require_object(resp, "response")
        s = resp.get("status")
        if s is not None and (not isinstance(s, int) or isinstance(s, bool)):
            raise ValueError("response.status must be an integer")
        status = s if s else None  # browsers write 0 for "no response"
        resp_headers, _ = _headers(resp.get("headers"), "response.headers")

    started = entry.get("startedDateTime")
    when = parse_time(started, "startedDateTime") if started is not None else time.time()

    server_ip = entry.get("serverIPAddress")
    server_ip = server_ip.strip("[]") if isinstance(server_ip, str) else ""
    src = entry.get("_source")
    dst = entry.get("_destination")
    source = Identity.parse(_str(src, "_source")) if src is not None else source_from_xfcc(headers)
    destination = (
        Identity.parse(_str(dst, "_destination"), ip=server_ip)
        if dst is not None
        else destination_from_authority(authority, ip=server_ip)
    )
    obs = Observation(
        seen_by=seen_by,
        source=source,
        destination=destination,
        time=when,
        protocol=normalize_protocol(str(req.get("httpVersion", ""))),
        method=method.upper(),
        authority=authority,
        path=parts.path or "/",
        query=parts.query,
        headers=headers,
        body=body,
        body_truncated=declared is not None and len(body) < declared,
        body_size=declared,
        status=status,
        response_headers=resp_headers,
        request_id=next((v for k, v in headers if k == "x-request-id"), ""),
    )
    obs.fill_grpc()
    return whole_text(obs)


def read_har(name: str, f: IO[bytes], seen_by: SeenBy = "file") -> Iterator[Item]:
    """Stream the entries of one HAR file; bad entries and broken JSON become EntryErrors."""
    n = 0
    try:
        entries = ijson.items(DepthGuard(f), "log.entries.item", use_float=True)
        for n, entry in enumerate(entries, 1):
            try:
                yield at_entry(observation_from_entry(entry, seen_by), name, n)
            except BAD_VALUE as exc:
                yield EntryError(name, n, describe(exc))
    except JSON_ERRORS as exc:
        yield EntryError(
            name, n + 1, f"invalid or truncated JSON, rest of file skipped: {json_error(exc)}"
        )
        return
    if n == 0 and f.seekable():
        problem = _entries_problem(f)
        if problem:
            yield EntryError(name, None, problem)


def _entries_problem(f: IO[bytes]) -> str:
    """Why a HAR file gave no entries: '' when it simply has an empty log.entries array."""
    f.seek(0)
    try:
        for prefix, ev, _ in ijson.parse(DepthGuard(f)):
            if prefix == "log.entries":
                return "" if ev == "start_array" else "log.entries is not an array"
    except JSON_ERRORS as exc:
        return f"invalid JSON: {json_error(exc)}"
    return "no log.entries array: not a HAR file"
