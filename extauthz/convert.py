"""CheckRequest -> Observation and Verdict -> CheckResponse, on the upb message classes.

This is the hot path of every enforced request: plain attribute reads on upb messages, no
dataclass conversion, and the OK answer is serialised once and reused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from meshward.core.observation import Identity, Observation
from meshward.core.wire import CONTEXT_NAMESPACE, CONTEXT_WORKLOAD

_PROTOCOLS = {"HTTP/1.0": "http/1.0", "HTTP/1.1": "http/1.1", "HTTP/2": "h2", "HTTP/3": "h3"}

OK_RESPONSE = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK),
    ok_response=external_auth_pb2.OkHttpResponse(),
)
OK_BYTES = OK_RESPONSE.SerializeToString()


def _peer(peer: attribute_context_pb2.AttributeContext.Peer) -> Identity:
    sock = peer.address.socket_address
    return Identity.parse(peer.principal, ip=sock.address, port=sock.port_value)


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> list[tuple[str, str]]:
    """Headers from `header_map` (raw bytes, any encoding) or else the string map.

    Envoy hands header names over lower-cased (AttributeContext docs), so they are kept as is.
    """
    if hm := http.header_map.headers:
        return [
            (h.key, raw.decode("utf-8", "replace") if (raw := h.raw_value) else h.value) for h in hm
        ]
    return list(http.headers.items())


Guard = Callable[[str, str], tuple[str, str]]


def check_to_observation(
    req: external_auth_pb2.CheckRequest,
    fallback: Callable[[], tuple[str, str]] | None = None,
    guard: Guard | None = None,
    principal: str = "",
) -> Observation:
    """Read one CheckRequest.

    The guarded namespace/workload are hints the sidecar writes (wire.UNTRUSTED_HINTS):
    `context_extensions`, else `fallback()` (the gRPC metadata, asked only when they lack them).
    `guard(namespace, workload)` turns the hints into what the verified peer allows
    (meshward.core.peer.guarded, raising Refused on a contradiction) and `principal` is that
    peer's SPIFFE id; without a guard (unverified in-process use) the hints are taken as they are.
    The source is `source.principal`: what the (verified) sidecar's own TLS verified."""
    attrs = req.attributes
    http = attrs.request.http
    ext = attrs.context_extensions
    dest = _peer(attrs.destination)
    ns = ext.get(CONTEXT_NAMESPACE)
    wl = ext.get(CONTEXT_WORKLOAD)
    if (not ns or not wl) and fallback is not None:
        fb_ns, fb_wl = fallback()
        ns, wl = ns or fb_ns, wl or fb_wl
    if guard is not None:
        ns, wl = guard(ns or "", wl or "")
        dest.principal = principal
    if ns:
        dest.namespace = ns
    if wl:
        dest.workload = wl
    target = http.path or "/"
    path, _, query = target.partition("?")
    if "#" in query:
        query = query.split("#", 1)[0]
    body = http.raw_body or http.body.encode("utf-8")
    size = http.size if http.size >= 0 else None
    headers = _headers(http)
    obs = Observation(
        seen_by="extauthz",
        source=_peer(attrs.source),
        destination=dest,
        time=time.time(),
        protocol=_PROTOCOLS.get(http.protocol, http.protocol.lower() or "http/1.1"),
        method=http.method,
        authority=http.host,
        path=path or "/",
        query=query or http.query,
        headers=headers,
        body=body,
        body_truncated=size is not None and len(body) < size,
        body_size=size,
        request_id=http.id,
    )
    grpc = False
    for k, v in headers:
        if k == "x-request-id":
            obs.request_id = v
        elif k == "content-type":
            grpc = grpc or v[:16].lower() == "application/grpc"
        elif k == "x-envoy-auth-partial-body" and v == "true":
            obs.body_truncated = True
    if grpc:
        obs.fill_grpc()
    return obs


DENIED = "denied by meshward"


def denied_response(request_id: str) -> external_auth_pb2.CheckResponse:
    """HTTP 403 that tells the denied caller nothing it could learn from: "denied by meshward"
    and the request id, to quote to whoever runs meshward. Which rule and reasons denied it go
    to the alert (the same request id) only, never to the caller: a caller who saw them could
    adjust a request until it passes."""
    body = json.dumps({"error": DENIED, "request_id": request_id[:128]}, separators=(",", ":"))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=DENIED),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", value="application/json")
                ),
            ],
            body=body,
        ),
    )
