"""Namespace modes reach the node tap: flags, and polling `meshward serve`'s API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from meshward.tap.node.modepoll import ModeSource, parse_mode_flags


@pytest.fixture
def api() -> Iterator[tuple[str, dict]]:
    state = {"doc": {"default": "learn", "modes": {"shop": "monitor"}}, "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(state["doc"]).encode()
            self.send_response(state["status"])
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_flags_parse_and_reject() -> None:
    assert parse_mode_flags(["shop=enforce", "pay=monitor"]) == {
        "shop": "enforce",
        "pay": "monitor",
    }
    for bad in ("shop", "=enforce", "shop=block"):
        with pytest.raises(ValueError, match="NAMESPACE="):
            parse_mode_flags([bad])


def test_polled_modes_with_local_overrides(api: tuple[str, dict]) -> None:
    url, state = api
    modes = ModeSource({"pay": "enforce"}, server=url)
    assert modes.poll_once()
    assert modes.mode_of("shop") == "monitor"
    assert modes.mode_of("pay") == "enforce"
    assert modes.mode_of("other") == "learn"
    state["doc"] = {"default": "monitor", "modes": {"shop": "enforce"}}
    assert modes.poll_once()
    assert modes.mode_of("shop") == "enforce" and modes.mode_of("other") == "monitor"


def test_failed_poll_keeps_last_good_modes(api: tuple[str, dict]) -> None:
    url, state = api
    modes = ModeSource(server=url)
    assert modes.poll_once()
    state["doc"] = {"modes": "garbage"}
    assert not modes.poll_once()
    state["status"] = 500
    assert not modes.poll_once()
    assert modes.mode_of("shop") == "monitor" and modes.poll_errors == 2
    down = ModeSource(server="http://127.0.0.1:9")  # nothing listens on the discard port
    assert not down.poll_once() and down.mode_of("shop") == "learn"


def test_background_poller_starts_and_stops(api: tuple[str, dict]) -> None:
    url, _ = api
    modes = ModeSource(server=url, interval=0.05)
    modes.start()
    try:
        for _ in range(100):
            if modes.polled:
                break
            threading.Event().wait(0.02)
        assert modes.mode_of("shop") == "monitor"
    finally:
        modes.stop()


def test_cli_rejects_bad_modes_and_thresholds(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from meshward.app.cli import main

    bad = Path(str(tmp_path)) / "net.yaml"
    bad.write_text("icmp_flood_pps: lots\n")
    unknown = Path(str(tmp_path)) / "unknown.yaml"
    unknown.write_text("no_such_threshold: 3\n")
    cases = [
        (["--mode", "shop=block"], "NAMESPACE="),
        (["--net-config", str(bad)], "--net-config"),
        (["--net-config", str(unknown)], "no_such_threshold"),
        (["--net-config", "/nonexistent/net.yaml"], "--net-config"),
    ]
    for flags, expected in cases:
        assert main(["node-tap", "--iface", "lo", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
