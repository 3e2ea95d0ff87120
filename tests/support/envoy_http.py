"""Fixtures for the Envoy end-to-end tests: a real `meshward serve` (in a thread), an echo app."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from meshward.app.auth import AuthConfig
from meshward.app.serve import ServeConfig, Server
from meshward.core.engine import EngineConfig, detector_for
from meshward.core.threats.inspection import Detector
from meshward.runtime.client import ApiClient
from meshward.runtime.grpcpeer import UNVERIFIED
from tests.support.envoy import echo_app, envoy_bin
from tests.support.metrics import sample
from tests.support.serve import API_TOKEN

__all__ = ["ServerThread", "echo_app", "envoy_bin", "free_port", "http"]


@functools.cache
def _detector() -> Detector:
    """The embedded threat detectors (engine default), built once: compiling them takes ~2 s."""
    return detector_for(EngineConfig())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`meshward serve` on its own event loop thread, as the process would run it."""

    def __init__(self, db: str, authz_port: int = 0, tap_port: int = 0, **config: Any) -> None:
        config.setdefault("auth", AuthConfig(token=API_TOKEN))
        config.setdefault("peers", UNVERIFIED)  # unless the test verifies the sidecars
        self.config = ServeConfig(
            db=db,
            listen_host="127.0.0.1",
            authz_port=authz_port,
            tap_port=tap_port,
            http_port=0,
            **config,
        )
        self.server: Server | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        self.server = Server(self.config, detector=_detector())
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

    @property
    def client(self) -> ApiClient:
        return ApiClient(f"http://127.0.0.1:{self.ports['http']}", self.config.auth.token)

    def api(self, method: str, path: str, doc: Any = None) -> Any:
        return self.client.request(method, path, doc)

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics sample whose line starts with `line_start`."""
        return sample(self.api("GET", "/metrics"), line_start)

    def wait_metric(self, line_start: str, at_least: float, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(line_start) < at_least:
            assert time.monotonic() < deadline, f"{line_start} never reached {at_least}"
            time.sleep(0.05)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http(
    port: int,
    path: str,
    body: bytes | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through Envoy: (status, response headers lower-case, body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
