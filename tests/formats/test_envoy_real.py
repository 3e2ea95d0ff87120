"""Tap files written by a real Envoy 1.40 (tap filter, file_per_tap sink) read back as
Observations: both body formats, streamed segments, and the same traces as JSON Lines."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ijson
import pytest

from meshward.core.observation import Observation
from meshward.formats import read_observations

envoyproc = pytest.importorskip("meshward.istio.envoyproc")

XFCC = "By=spiffe://cluster.local/ns/shop/sa/api;URI=spiffe://cluster.local/ns/web/sa/frontend"


class _App(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        body = b'{"ok": true}'
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        t.join()


def _bootstrap(app_port: int, prefix: Path, fmt: str, streaming: bool) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "in",
        "forward_client_cert_details": "ALWAYS_FORWARD_ONLY",  # keep our XFCC (default: strip)
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.tap",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
                    "record_headers_received_time": True,
                    # Envoy 1.40 writes buffered traces when this is on, even with streaming set
                    "record_downstream_connection": not streaming,
                    "common_config": {
                        "static_config": {
                            "match_config": {"any_match": True},
                            "output_config": {
                                "streaming": streaming,
                                "sinks": [
                                    {"format": fmt, "file_per_tap": {"path_prefix": str(prefix)}}
                                ],
                            },
                        }
                    },
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": app_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def _send(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    post = urllib.request.Request(
        f"{base}/users/42/orders?dry=1",
        data=b'{"item": 7, "qty": 2}',
        method="POST",
        headers={
            "host": "api.shop.svc.cluster.local:8080",
            "content-type": "application/json",
            "x-forwarded-client-cert": XFCC,
        },
    )
    with urllib.request.urlopen(post, timeout=5) as r:
        assert r.status == 201
    get = urllib.request.Request(f"{base}/health", headers={"host": "api.shop.svc"})
    with urllib.request.urlopen(get, timeout=5) as r:
        assert r.status == 200


def _wait_files(d: Path, n: int) -> list[Path]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        files = sorted(d.glob("tap_*.json"), key=lambda p: p.stat().st_mtime_ns)
        if len(files) >= n:
            return files
        time.sleep(0.05)
    raise AssertionError(f"envoy wrote {len(list(d.iterdir()))} tap files, expected {n}")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fmt", "streaming"),
    [("JSON_BODY_AS_BYTES", False), ("JSON_BODY_AS_STRING", False), ("JSON_BODY_AS_BYTES", True)],
    ids=["buffered-bytes", "buffered-string", "streamed-segments"],
)
def test_real_envoy_tap_files(app: int, tmp_path: Path, fmt: str, streaming: bool) -> None:
    started = time.time()
    bootstrap = _bootstrap(app, tmp_path / "tap", fmt, streaming)
    with envoyproc.EnvoyProcess(bootstrap, name="tap") as envoy:
        _send(envoy.port)
        files = _wait_files(tmp_path, 2)
    items = list(read_observations([str(f) for f in files]))
    kind = "http_streamed_trace_segment" if streaming else "http_buffered_trace"
    assert all(kind in f.read_text() for f in files)
    assert all(isinstance(i, Observation) for i in items), items
    post, get = sorted(items, key=lambda o: o.method == "GET")  # type: ignore[union-attr]
    assert isinstance(post, Observation) and isinstance(get, Observation)
    assert (post.method, post.path, post.query) == ("POST", "/users/42/orders", "dry=1")
    assert post.body == b'{"item": 7, "qty": 2}' and not post.body_truncated
    assert post.body_size == 21 and post.content_type == "application/json"
    assert post.destination.key == "shop/api" and post.destination.port == 8080
    # streamed segments carry no connection: the caller's address is known only when buffered
    assert post.source.key == "web/frontend"
    assert post.source.ip == ("" if streaming else "127.0.0.1")
    assert post.status == 201 and post.request_id
    assert started - 1 <= post.time <= time.time() + 1
    assert (get.method, get.path, get.status, get.body) == ("GET", "/health", 200, b"")
    assert get.destination.key == "shop/api"
    assert get.source.key == ("unknown" if streaming else "127.0.0.1")

    # the same traces as one JSON Lines file
    lines = tmp_path / "all.jsonl"
    lines.write_text(
        "".join(
            json.dumps(v) + "\n"
            for f in files
            for v in ijson.items(f.open("rb"), "", multiple_values=True)
        )
    )
    again = list(read_observations([str(lines)]))
    assert [(o.method, o.path, o.body) for o in again] == [  # type: ignore[union-attr]
        (o.method, o.path, o.body)
        for o in items  # type: ignore[union-attr]
    ]
