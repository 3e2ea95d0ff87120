"""Envoy tap traces (`envoy.data.tap.v3.TraceWrapper` as JSON) as Observations.

Accepted: one trace per file (Envoy's `file_per_tap` sink, pretty-printed or not, several
concatenated values too) and one trace per line (JSON Lines, read line by line so a huge file is
never held whole). Field names in proto spelling (`http_buffered_trace`, as Envoy writes them) or
lowerCamelCase (`httpBufferedTrace`, protobuf's default JSON). Bodies as `as_bytes` (base64,
formats JSON_BODY_AS_BYTES) or `as_string` (JSON_BODY_AS_STRING), with their `truncated` flag.

`http_buffered_trace` is the main form. `http_streamed_trace_segment`s are put back together by
`trace_id` (TraceSegmentAssembler: a request is complete when its response headers arrive; the
rest at the end of the file), at most MAX_PENDING_STREAMS open at once. Socket traces carry no HTTP
exchange and are reported as unsupported.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import ijson

from meshward.core.observation import Observation, SeenBy, whole_text
from meshward.core.values import decimal
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
    parse_time,
    require_object,
    source_from_xfcc,
    split_pseudo,
)

MAX_LINE = 64 << 20  # a JSON Lines record longer than this is reported and skipped
MAX_PENDING_STREAMS = 10_000  # streamed traces assembled at once; the oldest is emitted beyond
MAX_STREAM_BODY = 1 << 20  # body bytes kept per streamed trace; the rest marks it truncated


@functools.cache
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


_TRACE_FIELDS = (
    "http_buffered_trace",
    "http_streamed_trace_segment",
    "socket_buffered_trace",
    "socket_streamed_trace_segment",
)
TRACE_KEYS = frozenset(_TRACE_FIELDS) | {_camel(k) for k in _TRACE_FIELDS}


def _get(d: dict[str, Any], name: str) -> Any:
    """A field in proto spelling or in protobuf's lowerCamelCase JSON spelling."""
    v = d.get(name)
    return d.get(_camel(name)) if v is None else v


def _headers(value: object, what: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """HeaderValue list -> (lower-cased headers, pseudo-headers such as :path kept apart)."""
    if value is None:
        return [], {}
    if isinstance(value, dict):  # a HeaderMap {"headers": [...]}
        value = value.get("headers", [])
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    pairs: list[tuple[str, str]] = []
    for i, h in enumerate(value):
        if not isinstance(h, dict) or not isinstance(h.get("key"), str):
            raise ValueError(f"{what}[{i}] must be an object with a string key")
        v = h.get("value")
        if not v:
            raw = _get(h, "raw_value")
            if raw:
                try:
                    v = base64.b64decode(str(raw), validate=True).decode("utf-8", "replace")
                except (binascii.Error, ValueError) as exc:
                    raise ValueError(f"{what}[{i}].raw_value is not base64") from exc
        pairs.append((h["key"], "" if v is None else str(v)))
    return split_pseudo(pairs)


def _body(value: object, what: str) -> tuple[bytes, bool]:
    """A tap Body -> (bytes, truncated)."""
    if value is None:
        return b"", False
    value = require_object(value, what)
    truncated = bool(value.get("truncated", False))
    raw = _get(value, "as_bytes")
    if raw is not None:
        try:
            return base64.b64decode(str(raw), validate=True), truncated
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{what}.as_bytes is not base64") from exc
    text = _get(value, "as_string")
    if text is not None:
        if not isinstance(text, str):
            raise ValueError(f"{what}.as_string must be a string")
        return text.encode("utf-8", "surrogatepass"), truncated
    return b"", truncated


def _address(conn: object, which: str) -> tuple[str, int]:
    """ip and port of a Connection's local_address / remote_address (socket_address only)."""
    if not isinstance(conn, dict):
        return "", 0
    addr = _get(conn, which)
    sock = _get(addr, "socket_address") if isinstance(addr, dict) else None
    if not isinstance(sock, dict):
        return "", 0
    ip = str(sock.get("address", ""))
    port = _get(sock, "port_value")
    if isinstance(port, int) and not isinstance(port, bool):
        return ip, port if 0 <= port < 1 << 32 else 0
    return ip, (decimal(port) or 0) if isinstance(port, str) else 0


@dataclass
class _Exchange:
    """The parts of one HTTP exchange a trace carries, whichever form it came in."""

    request_headers: object = None
    request_body: bytes = b""
    request_truncated: bool = False
    response_headers: object = None
    connection: object = None
    time: object = None


def _observation(x: _Exchange, seen_by: SeenBy) -> Observation:
    headers, pseudo = _headers(x.request_headers, "request.headers")
    if not pseudo and not headers:
        raise ValueError("trace has no request headers")
    method = pseudo.get(":method", "")
    if not method:
        raise ValueError("request has no :method header")
    target = pseudo.get(":path", "")
    if not target:
        raise ValueError("request has no :path header")
    path, _, query = target.partition("?")
    authority = pseudo.get(":authority", "")
    if not authority:
        authority = next((v for k, v in headers if k == "host"), "")
    resp_headers, resp_pseudo = _headers(x.response_headers, "response.headers")
    status_text = resp_pseudo.get(":status", "")
    status = decimal(status_text, 3)
    declared = content_length(headers)
    if declared is None and (x.request_body or x.request_truncated):
        declared = None if x.request_truncated else len(x.request_body)
    src_ip, src_port = _address(x.connection, "remote_address")
    dst_ip, dst_port = _address(x.connection, "local_address")
    when = parse_time(x.time, "headers_received_time") if x.time is not None else time.time()
    obs = Observation(
        seen_by=seen_by,
        source=source_from_xfcc(headers, src_ip, src_port),
        destination=destination_from_authority(authority, dst_ip, dst_port),
        time=when,
        protocol="http/1.1",  # a tap trace does not record the version; gRPC is set below
        method=method.upper(),
        authority=authority,
        path=path or "/",
        query=query,
        headers=headers,
        body=x.request_body,
        body_truncated=x.request_truncated
        or (declared is not None and len(x.request_body) < declared),
        body_size=declared,
        status=status,
        response_headers=resp_headers,
        request_id=next((v for k, v in headers if k == "x-request-id"), ""),
    )
    obs.fill_grpc()
    return whole_text(obs)


def observations_from_trace(obj: object, seen_by: SeenBy = "file") -> list[Observation]:
    """One TraceWrapper (as decoded JSON) -> its Observations (one for an HTTP buffered trace).

    Raises ValueError with a one-line reason for anything else, including streamed segments
    (use `TraceSegmentAssembler` for those) and socket traces.
    """
    obj = require_object(obj, "trace")
    trace = _get(obj, "http_buffered_trace")
    if trace is None:
        raise ValueError(_not_buffered(obj))
    trace = require_object(trace, "http_buffered_trace")
    req = require_object(_get(trace, "request") or {}, "http_buffered_trace.request")
    resp = _get(trace, "response")
    resp = require_object(resp, "http_buffered_trace.response") if resp is not None else {}
    body, truncated = _body(_get(req, "body"), "request.body")
    x = _Exchange(
        request_headers=_get(req, "headers"),
        request_body=body,
        request_truncated=truncated,
        response_headers=_get(resp, "headers"),
        connection=_get(trace, "downstream_connection"),
        time=_get(req, "headers_received_time"),
    )
    return [_observation(x, seen_by)]


def _not_buffered(obj: dict[str, Any]) -> str:
    if _get(obj, "http_streamed_trace_segment") is not None:
        return "http_streamed_trace_segment: streamed segments must be assembled first"
    if _get(obj, "socket_buffered_trace") is not None or _get(obj, "socket_streamed_trace_segment"):
        return "socket traces are not supported (no HTTP exchange): tap the HTTP filter"
    keys = ", ".join(sorted(map(str, obj))[:5]) or "none"
    return f"not an Envoy TraceWrapper (no http_buffered_trace; keys: {keys})"


class TraceSegmentAssembler:
    """Puts `http_streamed_trace_segment`s back together by trace_id, within bounds.

    A trace is emitted when its response headers arrive (the request, body included, is
    complete by then; later segments of it are ignored), else when `finish()` is called, else
    when more than MAX_PENDING_STREAMS are open (the oldest goes). Works for files and for
    Envoy's live admin /tap stream alike.
    """

    def __init__(self, seen_by: SeenBy = "file") -> None:
        self.seen_by = seen_by
        self._open: dict[str, _Exchange] = {}
        self._done: OrderedDict[str, None] = OrderedDict()  # recently emitted trace ids
        self.dropped = 0  # evicted traces that could not become an Observation

    def add(self, segment: dict[str, Any]) -> list[Observation]:
        """Absorb one segment; returns the Observations it completed (usually none or one)."""
        tid = str(_get(segment, "trace_id") or "")
        if tid in self._done:
            return []
        x = self._open.get(tid)
        if x is None:
            x = self._open[tid] = _Exchange()
        if (h := _get(segment, "request_headers")) is not None:
            x.request_headers = h
        if (c := _get(segment, "connection")) is not None:
            x.connection = c
        chunk = _get(segment, "request_body_chunk")
        if chunk is not None:
            data, truncated = _body(chunk, "request_body_chunk")
            room = max(MAX_STREAM_BODY - len(x.request_body), 0)
            x.request_body += data[:room]
            x.request_truncated |= truncated or len(data) > room
        out: list[Observation] = []
        if (h := _get(segment, "response_headers")) is not None:
            x.response_headers = h
            if x.request_headers is not None:
                del self._open[tid]
                self._remember(tid)
                out.append(_observation(x, self.seen_by))
        while len(self._open) > MAX_PENDING_STREAMS:
            old = next(iter(self._open))
            try:
                out.append(_observation(self._open.pop(old), self.seen_by))
            except BAD_VALUE:
                self.dropped += 1
        return out

    def _remember(self, tid: str) -> None:
        self._done[tid] = None
        if len(self._done) > MAX_PENDING_STREAMS:
            self._done.popitem(last=False)

    def finish(self) -> Iterator[tuple[str, Observation | ValueError]]:
        """Every trace still open, in order of first segment: (trace_id, Observation or error)."""
        pending, self._open = self._open, {}
        for tid, x in pending.items():
            try:
                yield tid, _observation(x, self.seen_by)
            except BAD_VALUE as exc:
                yield tid, ValueError(describe(exc))


def _convert(
    obj: object, name: str, n: int, unit: str, streams: TraceSegmentAssembler
) -> Iterator[Item]:
    try:
        if isinstance(obj, dict) and _get(obj, "http_streamed_trace_segment") is not None:
            key = "http_streamed_trace_segment"
            seg = require_object(_get(obj, key), key)
            done = streams.add(seg)
        else:
            done = observations_from_trace(obj, streams.seen_by)
        yield from (at_entry(obs, name, n) for obs in done)
    except BAD_VALUE as exc:
        yield EntryError(name, n, describe(exc), unit)


def _finish(name: str, streams: TraceSegmentAssembler) -> Iterator[Item]:
    for tid, result in streams.finish():
        if isinstance(result, ValueError):
            yield EntryError(name, None, f"streamed trace {tid}: {result}")
        else:
            yield result


def read_tap_lines(name: str, f: IO[bytes], seen_by: SeenBy = "file") -> Iterator[Item]:
    """JSON Lines: one TraceWrapper per line; a bad line is reported and skipped."""
    streams = TraceSegmentAssembler(seen_by)
    lineno = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            break
        lineno += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield EntryError(name, lineno, f"line longer than {MAX_LINE} bytes, skipped", "line")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
            yield EntryError(name, lineno, f"invalid JSON: {json_error(exc)}", "line")
            continue
        yield from _convert(obj, name, lineno, "line", streams)
    yield from _finish(name, streams)


def read_tap_document(name: str, f: IO[bytes], seen_by: SeenBy = "file") -> Iterator[Item]:
    """One trace per file (possibly pretty-printed), or several concatenated JSON values."""
    streams = TraceSegmentAssembler(seen_by)
    n = 0
    try:
        docs = ijson.items(DepthGuard(f), "", multiple_values=True, use_float=True)
        for n, obj in enumerate(docs, 1):
            yield from _convert(obj, name, n, "entry", streams)
    except JSON_ERRORS as exc:
        yield EntryError(
            name, n + 1, f"invalid or truncated JSON, rest of file skipped: {json_error(exc)}"
        )
    yield from _finish(name, streams)


def is_trace_key(key: str) -> bool:
    return key in TRACE_KEYS
