"""One ext_proc stream (observability mode) -> one Observation, with bounded buffers.

Envoy sends request headers, request body chunks, response headers (and, if the filter asks,
response body chunks and trailers) on one gRPC stream per HTTP request. The assembler keeps only
what fits its limits and says when the exchange is complete, so the server can end the stream
right away (docs/envoy.md: Envoy otherwise holds the stream for `deferred_close_timeout`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2

from meshward.core import wire
from meshward.core.observation import Direction, Identity, Observation
from meshward.core.values import decimal

_NONE = processing_mode_pb2.ProcessingMode.NONE
_PROTOCOLS = {"HTTP/1.0": "http/1.0", "HTTP/1.1": "http/1.1", "HTTP/2": "h2", "HTTP/3": "h3"}
# the attributes `observation` reads, as the filter asks Envoy for them: only they are kept,
# so a stream's attribute table is bounded whatever names arrive
_ATTRIBUTES = frozenset(wire.TAP_ATTRIBUTES)


@dataclass(frozen=True)
class TapLimits:
    """Per-stream bounds: body bytes kept, headers kept, messages read."""

    max_body: int = 64 * 1024
    max_headers: int = 128
    max_header_bytes: int = 64 * 1024
    max_messages: int = 4096


@dataclass(frozen=True)
class StreamContext:
    """Who sent the stream: the sidecar's workload and which side of the call it sits on."""

    namespace: str = ""
    workload: str = ""
    direction: Direction = "inbound"  # inbound: the callee's sidecar; outbound: the caller's
    node: str = ""
    # the filter also streams response bodies (metadata wire.METADATA_TAP_RESPONSE_BODY: true);
    # Envoy 1.40 does not send protocol_config in observability mode, so it must be told
    response_body: bool = False
    # the sidecar's verified SPIFFE id (meshward.core.peer); "" when unverified (in-process)
    principal: str = ""


HEADER_FLOOR = 8 * 1024  # header bytes a stream keeps even with the budget spent


class ByteBudget:
    """Bytes all open streams may hold together. The per-stream TapLimits times thousands of open
    streams is gigabytes: past the budget, a flood of big streams keeps less (bodies cut, headers
    cut to HEADER_FLOOR, flagged as truncated) instead of growing the heap. So open streams hold
    at most the budget plus HEADER_FLOOR per header list."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, n: int) -> int:
        """Up to n bytes granted (what is left of the budget)."""
        granted = max(0, min(n, self.total - self.used))
        self.used += granted
        return granted

    def give(self, n: int) -> None:
        self.used -= n


def _header_list(
    hmap: base_pb2.HeaderMap, limits: TapLimits, max_bytes: int
) -> tuple[list[tuple[str, str]], int, bool]:
    """Headers as (lower-case name, value), raw bytes decoded leniently; their size; and True if
    cut short (more than limits.max_headers, or than max_bytes)."""
    out: list[tuple[str, str]] = []
    total = 0
    for h in hmap.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        size = len(h.key) + len(value)
        if len(out) >= limits.max_headers or total + size > max_bytes:
            return out, total, True
        total += size
        out.append((h.key.lower(), value))
    return out, total, False


class ExtProcAssembler:
    """One ext_proc stream into one Observation; `feed` is True once the exchange is complete."""

    def __init__(
        self, ctx: StreamContext, limits: TapLimits | None = None, budget: ByteBudget | None = None
    ) -> None:
        self.ctx = ctx
        self.limits = limits or TapLimits()
        self.budget = budget
        self.held = 0  # bytes taken from the budget, given back by release()
        self.budget_cut = False  # the shared budget, not this stream's limits, cut something
        self.started = time.time()
        self.messages = 0
        self.request_headers: list[tuple[str, str]] | None = None
        self.response_headers: list[tuple[str, str]] | None = None
        self.body = bytearray()
        self.body_seen = 0
        self.body_truncated = False
        self.headers_truncated = False
        self.response_body_expected = ctx.response_body
        self.attributes: dict[str, str] = {}
        self.complete = False

    def feed(self, req: external_processor_pb2.ProcessingRequest) -> bool:
        self.messages += 1
        if self.messages == 1 and req.HasField("protocol_config"):
            mode = req.protocol_config.response_body_mode
            self.response_body_expected = mode != _NONE
        if req.attributes:
            self._read_attributes(req)
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            self.request_headers = self._headers(req.request_headers.headers)
        elif kind == "request_body":
            self._add_body(req.request_body.body)
        elif kind == "response_headers":
            self.response_headers = self._headers(req.response_headers.headers)
            if req.response_headers.end_of_stream or not self.response_body_expected:
                self.complete = True
        elif kind == "response_body":
            if req.response_body.end_of_stream:
                self.complete = True
        elif kind == "response_trailers":
            self.complete = True
        if self.messages >= self.limits.max_messages:
            self.complete = True
        return self.complete

    def _headers(self, hmap: base_pb2.HeaderMap) -> list[tuple[str, str]]:
        room = self.limits.max_header_bytes
        if self.budget is not None:  # the usual headers even then: an exchange needs its :path
            room = min(room, max(self.budget.total - self.budget.used, HEADER_FLOOR))
        headers, size, cut = _header_list(hmap, self.limits, room)
        self.headers_truncated |= cut
        if self.budget is not None:
            self.held += self.budget.take(size)
            self.budget_cut |= cut and room < self.limits.max_header_bytes
        return headers

    def _add_body(self, chunk: bytes) -> None:
        self.body_seen += len(chunk)
        room = self.limits.max_body - len(self.body)
        if room <= 0:
            self.body_truncated = self.body_truncated or bool(chunk)
            return
        if len(chunk) > room:
            self.body_truncated = True
            chunk = chunk[:room]
        if self.budget is not None and chunk:
            granted = self.budget.take(len(chunk))
            self.held += granted
            if granted < len(chunk):
                self.body_truncated = self.budget_cut = True
                chunk = chunk[:granted]
        self.body += chunk

    def release(self) -> None:
        """Give this stream's bytes back to the budget (the Observation has its own copy)."""
        if self.budget is not None:
            self.budget.give(self.held)
        self.held = 0

    def _read_attributes(self, req: external_processor_pb2.ProcessingRequest) -> None:
        for struct in req.attributes.values():
            for name, value in struct.fields.items():
                if name not in _ATTRIBUTES:
                    continue
                kind = value.WhichOneof("kind")
                if kind == "string_value":
                    self.attributes[name] = value.string_value[:512]
                elif kind == "number_value" and math.isfinite(value.number_value):  # NaN, inf
                    self.attributes[name] = str(int(value.number_value))

    def observation(self) -> Observation | None:
        """The exchange as seen so far; None when not even the request headers arrived."""
        if self.request_headers is None:
            return None
        pseudo = {k: v for k, v in self.request_headers if k.startswith(":")}
        headers = [(k, v) for k, v in self.request_headers if not k.startswith(":")]
        target = pseudo.get(":path", "/")
        path, _, query = target.partition("?")
        authority = pseudo.get(":authority", "") or _first(headers, "host")
        status = None
        response_headers: list[tuple[str, str]] = []
        if self.response_headers is not None:
            response_headers = [(k, v) for k, v in self.response_headers if not k.startswith(":")]
            code = _first(self.response_headers, ":status")
            status = decimal(code)
        size = decimal(_first(headers, "content-length"))
        a = self.attributes
        src_ip, src_port = _split_addr(a.get("source.address", ""))
        dst_ip, dst_port = _split_addr(a.get("destination.address", ""))
        peer = Identity.parse(
            a.get("connection.uri_san_peer_certificate", ""),
            ip=src_ip,
            port=_int(a.get("source.port", "")) or src_port,
        )
        local = Identity(
            namespace=self.ctx.namespace,
            workload=self.ctx.workload,
            principal=self.ctx.principal or a.get("connection.uri_san_local_certificate", ""),
            ip=dst_ip,
            port=_int(a.get("destination.port", "")) or dst_port,
        )
        if self.ctx.direction == "outbound":
            # the caller's sidecar: it is the source; the callee is named by the authority
            local.ip, local.port = "", 0
            source, destination = local, Identity.parse(authority.split(":", 1)[0])
        else:
            source, destination = peer, local
        obs = Observation(
            seen_by="envoy-tap",
            source=source,
            destination=destination,
            time=self.started,
            protocol=_PROTOCOLS.get(a.get("request.protocol", ""), "http/1.1"),
            method=pseudo.get(":method", ""),
            authority=authority,
            path=path or "/",
            query=query,
            headers=headers,
            body=bytes(self.body),
            body_truncated=self.body_truncated,
            body_size=size if size is not None else (self.body_seen or None),
            status=status,
            response_headers=response_headers,
            request_id=_first(headers, "x-request-id"),
            direction=self.ctx.direction,
            headers_truncated=self.headers_truncated,
            outcome="complete" if self.complete else "cut",  # the service names how it ended
        )
        if self.ctx.node:
            obs.extra["node"] = self.ctx.node
        obs.fill_grpc()
        return obs


def _first(headers: list[tuple[str, str]], name: str) -> str:
    for k, v in headers:
        if k == name:
            return v
    return ""


def _int(text: str) -> int:
    return decimal(text) or 0


def _split_addr(addr: str) -> tuple[str, int]:
    """`1.2.3.4:80` / `[::1]:80` / `1.2.3.4` -> (ip, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, _int(rest.lstrip(":"))
    if addr.count(":") == 1:
        host, _, port = addr.partition(":")
        return host, _int(port)
    return addr, 0
