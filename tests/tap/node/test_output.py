"""The node tap's outputs: JSON Lines, and batched POSTs with back-pressure and bounded drops."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from meshward.core.observation import Identity, Observation, observation_from_dict
from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.output import HttpOutput, JsonlOutput


def obs(i: int) -> Observation:
    return Observation(
        seen_by="node-tap",
        method="GET",
        path=f"/item/{i}",
        status=200,
        body=b"\xff\x00",
        destination=Identity("shop", "api"),
    )


class Ingest(BaseHTTPRequestHandler):
    batches: ClassVar[list[list[dict]]] = []
    fail = 0  # answer 503 this many times first

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if Ingest.fail > 0:
            Ingest.fail -= 1
            self.send_response(503)
            self.end_headers()
            return
        assert self.path == "/api/v1/observations"
        Ingest.batches.append(json.loads(body))
        self.send_response(202)
        self.end_headers()
        self.wfile.write(b'{"accepted": 1}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ingest() -> Iterator[str]:
    Ingest.batches, Ingest.fail = [], 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_jsonl_round_trips() -> None:
    m = NodeTapCounters()
    buf = io.StringIO()
    out = JsonlOutput(m, stream=buf)
    out.start()
    for i in range(5):
        out.put(obs(i))
    out.close()
    lines = buf.getvalue().splitlines()
    assert [observation_from_dict(json.loads(x)).path for x in lines] == [
        f"/item/{i}" for i in range(5)
    ]
    assert observation_from_dict(json.loads(lines[0])).body == b"\xff\x00"
    assert m.out_sent == 5 and m.out_dropped == 0


def test_http_batches_and_retries(ingest: str) -> None:
    Ingest.fail = 2
    m = NodeTapCounters()
    out = HttpOutput(m, ingest)
    out.start()
    for i in range(50):
        out.put(obs(i))
    deadline = time.monotonic() + 10
    while m.out_sent < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    out.close()
    sent = [d["path"] for batch in Ingest.batches for d in batch]
    assert sent == [f"/item/{i}" for i in range(50)]
    assert m.out_sent == 50 and m.out_dropped == 0


def test_server_down_drops_are_bounded_and_counted() -> None:
    m = NodeTapCounters()
    out = HttpOutput(m, "http://127.0.0.1:9", max_queue=10)  # discard port: refused
    out.start()
    for i in range(100):
        out.put(obs(i))
    assert len(out.queue) <= 10
    t = time.monotonic()
    out.close(timeout=1.0)
    assert time.monotonic() - t < 8
    assert m.out_sent == 0
    assert m.out_queued + m.out_dropped >= 100 and m.out_dropped >= 90
