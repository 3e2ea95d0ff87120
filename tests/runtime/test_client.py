"""The HTTP API client: JSON in and out, one ApiError with the status and the server's reason,
the bearer token sent but never shown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from meshward.runtime.client import ApiClient, ApiError


@pytest.fixture
def fake() -> Iterator[tuple[str, dict[str, Any]]]:
    """A server that records each request and answers `state["answer"]` (status, type, body)."""
    state: dict[str, Any] = {"answer": (200, "application/json", b"{}"), "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            size = int(self.headers.get("content-length") or 0)
            state["seen"].append(
                (self.command, self.path, dict(self.headers.items()), self.rfile.read(size))
            )
            status, kind, body = state["answer"]
            self.send_response(status)
            if kind:
                self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()


def test_json_in_and_out(fake: tuple[str, dict[str, Any]]) -> None:
    url, state = fake
    client = ApiClient(url)
    state["answer"] = (200, "application/json", b'{"namespace": "shop", "mode": "enforce"}')
    assert client.set_mode("shop", "enforce") == {"namespace": "shop", "mode": "enforce"}
    method, path, headers, body = state["seen"][-1]
    assert (method, path, json.loads(body)) == ("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    state["answer"] = (200, "application/json", b'{"alerts": [{"id": 1}]}')
    assert client.alerts(limit=5, namespace="shop") == [{"id": 1}]
    assert state["seen"][-1][1] == "/api/v1/alerts?limit=5&namespace=shop"
    assert client.alerts() == [{"id": 1}] and state["seen"][-1][1] == "/api/v1/alerts?limit=100"
    state["answer"] = (200, "text/plain; version=0.0.4", b"meshward_up 1\n")
    assert client.metrics_text() == "meshward_up 1\n"
    state["answer"] = (200, "", b'{"default": "learn", "modes": {}}')  # no type: JSON
    assert client.modes() == {"default": "learn", "modes": {}}
    state["answer"] = (202, "application/json", b'{"accepted": 2, "rejected": 0}')
    assert client.post_observations(b'{"a": 1}\n{"a": 2}\n') == {"accepted": 2, "rejected": 0}
    assert state["seen"][-1][3] == b'{"a": 1}\n{"a": 2}\n'


def test_errors_carry_status_and_the_servers_one_line_reason(
    fake: tuple[str, dict[str, Any]],
) -> None:
    url, state = fake
    client = ApiClient(url)
    state["answer"] = (400, "application/json", b'{"error": "mode must be one of learn"}')
    with pytest.raises(ApiError) as err:
        client.set_mode("shop", "block")
    assert (err.value.status, err.value.reason) == (400, "mode must be one of learn")
    assert str(err.value) == "PUT /api/v1/modes/shop: HTTP 400: mode must be one of learn"
    assert not err.value.retryable
    state["answer"] = (503, "text/plain", b"draining\nsecond line\n")
    with pytest.raises(ApiError) as err:
        client.modes()
    assert (err.value.status, err.value.reason, err.value.retryable) == (503, "draining", True)
    state["answer"] = (429, "text/plain", b"")
    with pytest.raises(ApiError) as err:
        client.modes()
    assert err.value.retryable and err.value.reason == "Too Many Requests"
    state["answer"] = (200, "application/json", b"{not json")
    with pytest.raises(ApiError, match="not JSON"):
        client.modes()


def test_no_answer_is_an_api_error_without_status() -> None:
    with pytest.raises(ApiError) as err:
        ApiClient("http://127.0.0.1:9", timeout=2).modes()  # discard port: refused
    assert err.value.status is None and err.value.retryable
    assert not ApiClient("http://127.0.0.1:9").ready()


def test_bearer_token_is_sent_and_never_shown(fake: tuple[str, dict[str, Any]]) -> None:
    url, state = fake
    client = ApiClient(url, token="s3cret-token")
    client.modes()
    assert state["seen"][-1][2]["Authorization"] == "Bearer s3cret-token"
    state["answer"] = (401, "application/json", b'{"error": "bad token"}')
    with pytest.raises(ApiError) as err:
        client.modes()
    assert "s3cret" not in str(err.value) and "s3cret" not in repr(client)
