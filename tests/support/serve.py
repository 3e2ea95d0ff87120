"""Shared helpers for the serve / ext_authz / tap tests: an in-process server, message builders."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2

from meshward.app.auth import AuthConfig
from meshward.app.flusher import Flusher
from meshward.app.serve import ServeConfig, Server
from meshward.app.store import open_store
from meshward.core.engine import Engine
from meshward.core.threats.inspection import Detector, NoDetector
from meshward.runtime.client import ApiClient
from meshward.runtime.grpcpeer import UNVERIFIED

# the API token every in-process test server runs with (authentication is on by default)
API_TOKEN = "test-api-token-" + secrets.token_urlsafe(16)


@contextlib.asynccontextmanager
async def running_server(
    db: str | None = None,
    engine: Engine | None = None,
    detector: Detector | None = None,
    **config: object,
) -> AsyncIterator[Server]:
    """A whole `meshward serve` on loopback ephemeral ports; stopped even on failure. With `db`
    (and no `engine`) it runs on that store, with `detector` (default: the real detectors).
    Its HTTP API asks for `API_TOKEN` unless `auth` says otherwise: call it with `api_client`.
    Its gRPC ports verify no caller unless `peers` says how (tests of other features send
    hints in plaintext; tests/app/serve/test_grpc_identity.py tests the verified ones)."""
    config.setdefault("auth", AuthConfig(token=API_TOKEN))
    config.setdefault("peers", UNVERIFIED)
    cfg = ServeConfig(
        db=db or ":memory:",
        listen_host="127.0.0.1",
        authz_port=0,
        tap_port=0,
        http_port=0,
        **config,  # type: ignore[arg-type]
    )
    if engine is None and db is None:
        engine = Engine(detector=NoDetector())
    server = Server(cfg, engine=engine, detector=detector)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.2)


def api_client(server: Server, timeout: float = 10.0) -> ApiClient:
    """The HTTP API client of a `running_server`, carrying its token."""
    return ApiClient(
        f"http://127.0.0.1:{server.ports['http']}", server.config.auth.token, timeout=timeout
    )


def engine_on(path: str) -> Engine:
    """An engine loaded from the store at `path` (the store is closed again)."""
    flusher = Flusher(Engine(detector=NoDetector()), open_store(path))
    try:
        flusher.load()
    finally:
        flusher.store.close()
    return flusher.engine


def check_request(
    method: str = "GET",
    path: str = "/",
    *,
    namespace: str = "shop",
    workload: str = "api",
    source: str = "spiffe://cluster.local/ns/shop/sa/web",
    headers: list[tuple[str, bytes]] | None = None,
    body: bytes = b"",
    request_id: str = "",
) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.principal = source
    a.source.address.socket_address.address = "10.0.0.2"
    a.source.address.socket_address.port_value = 40000
    a.destination.principal = f"spiffe://cluster.local/ns/{namespace}/sa/{workload}"
    a.context_extensions["namespace"] = namespace
    a.context_extensions["workload"] = workload
    http = a.request.http
    http.method = method
    http.path = path
    http.host = f"{workload}.{namespace}.svc.cluster.local"
    http.protocol = "HTTP/1.1"
    http.id = request_id
    all_headers = [(":method", method.encode()), (":path", path.encode())]
    if request_id:
        all_headers.append(("x-request-id", request_id.encode()))
    all_headers += headers or []
    for k, v in all_headers:
        http.header_map.headers.add(key=k, raw_value=v)
    if body:
        http.raw_body = body
        http.size = len(body)
    else:
        http.size = 0
    return req


def tap_messages(
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes = b"",
    chunks: int = 1,
    status: int = 200,
    request_id: str = "",
    content_type: str = "",
    complete: bool = True,
) -> list[external_processor_pb2.ProcessingRequest]:
    """The ProcessingRequests an observability-mode Envoy sends for one exchange."""
    out = []
    first = external_processor_pb2.ProcessingRequest(observability_mode=True)
    hdrs = [(":method", method), (":path", path), (":authority", "api.shop"), (":scheme", "http")]
    if request_id:
        hdrs.append(("x-request-id", request_id))
    if content_type:
        hdrs.append(("content-type", content_type))
    if body:
        hdrs.append(("content-length", str(len(body))))
    for k, v in hdrs:
        first.request_headers.headers.headers.add(key=k, raw_value=v.encode())
    first.request_headers.end_of_stream = not body
    attrs = first.attributes["envoy.filters.http.ext_proc"]
    attrs.fields["source.address"].string_value = "10.0.0.2:40000"
    attrs.fields[
        "connection.uri_san_peer_certificate"
    ].string_value = "spiffe://cluster.local/ns/shop/sa/web"
    out.append(first)
    if body:
        step = max(1, len(body) // chunks)
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        for i, part in enumerate(parts):
            msg = external_processor_pb2.ProcessingRequest(observability_mode=True)
            msg.request_body.body = part
            msg.request_body.end_of_stream = i == len(parts) - 1
            out.append(msg)
    if complete:
        resp = external_processor_pb2.ProcessingRequest(observability_mode=True)
        resp.response_headers.headers.headers.append(
            base_pb2.HeaderValue(key=":status", raw_value=str(status).encode())
        )
        out.append(resp)
    return out
