"""Traffic a real proxy forwards (RFC 9110/9112/9113 allow it) that must not blind the node tap:
no lost connection, no shifted request/response pairs, no unbounded memory."""

from __future__ import annotations

import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame, SettingsFrame

from meshward.tap.node.http2 import PREFACE
from tests.support.traffic import Conversation, run

ATTACK = "/items?id=1%27%20or%201=1--"


def h2_bytes(requests: list[list[tuple[str, str]]]) -> tuple[bytes, bytes]:
    """Client and server bytes, one GET per stream answered 200, with header lists of any size
    (the h2 library refuses to receive more than 64 KiB, a peer such as Go accepts 1 MiB)."""
    cli, srv = hpack.Encoder(), hpack.Encoder()
    c2s = PREFACE + SettingsFrame(0).serialize()
    s2c = SettingsFrame(0).serialize()
    for i, headers in enumerate(requests):
        sid = 2 * i + 1
        block = cli.encode(headers)
        parts = [block[j : j + 16384] for j in range(0, len(block), 16384)]
        flags = ["END_STREAM"] + (["END_HEADERS"] if len(parts) == 1 else [])
        c2s += HeadersFrame(sid, parts[0], flags=flags).serialize()
        for j, part in enumerate(parts[1:], 2):
            flags = ["END_HEADERS"] if j == len(parts) else []
            c2s += ContinuationFrame(sid, part, flags=flags).serialize()
        s2c += HeadersFrame(
            sid, srv.encode([(":status", "200")]), flags=["END_STREAM", "END_HEADERS"]
        ).serialize()
    return c2s, s2c


def h2_get(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "http"), (":authority", "api"), (":path", path), *extra]


def test_h2_header_list_over_64k_keeps_the_connection() -> None:
    """hpack refused a decoded header list over 64 KiB and the whole shared connection was
    lost; a 70 KiB cookie is legal and forwarded. Now the fields past 64 KiB are dropped and
    the request flagged; the request after it is seen."""
    c = Conversation()
    c.handshake()
    c2s, s2c = h2_bytes([h2_get("/a", ("x-small", "1"), ("cookie", "x" * 70_000)), h2_get(ATTACK)])
    c.send(True, c2s)
    c.send(False, s2c)
    c.fin()
    got, m = run(c.packets)
    assert [(o.path, o.status) for o in got] == [("/a", 200), ("/items", 200)]
    assert m.parse_errors == 0
    assert got[0].header("x-small") == "1" and got[0].header("cookie") == ""
    assert got[0].headers_truncated
    assert not got[1].headers_truncated and got[1].query == "id=1%27%20or%201=1--"


def test_h2_hpack_bomb_is_bounded() -> None:
    """One 4 KB table entry referenced 1000 times (4 MB decoded from a few KB on the wire) is
    cut at the list limit, not held, and the connection goes on."""
    c = Conversation()
    c.handshake()
    c2s, s2c = h2_bytes([h2_get("/a", *[("x-big", "v" * 4000)] * 1000), h2_get(ATTACK)])
    assert len(c2s) < 10_000
    c.send(True, c2s)
    c.send(False, s2c)
    c.fin()
    got, m = run(c.packets)
    assert [(o.path, o.status) for o in got] == [("/a", 200), ("/items", 200)]
    assert sum(len(k) + len(v) for k, v in got[0].headers) < 64 * 1024
    assert got[0].headers_truncated and m.parse_errors == 0


def test_h1_overlong_response_head_does_not_hang() -> None:
    """A response head past the 64 KiB limit (hyper reads up to ~400 KiB: a big Set-Cookie)
    went to resynchronisation, which found its own status line at offset 0 again and looped
    forever: the whole node tap hung. Likewise a chunk line past the limit whose bytes start
    with a status line (an echoing app). Now the long bytes are dropped and the next request
    and response are paired again."""
    for answer in (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 " + b"b" * 70_000,
    ):
        c = Conversation()
        c.handshake()
        c.send(True, b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
        c.send(False, answer)
        c.send(True, f"GET {ATTACK} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
        c.send(False, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        c.fin()
        got, m = run(c.packets)
        assert [(o.path, o.status) for o in got][-1] == ("/items", 201)
        assert m.parse_errors >= 1
