"""HTTP/2 and gRPC reconstruction from real h2-library bytes, and what breaks it."""

from __future__ import annotations

import hpack
from hyperframe.frame import HeadersFrame, SettingsFrame

from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.http2 import PREFACE, Http2Parser
from tests.support.traffic import Conversation, h2_exchange, run

CALLER = "web.shop.serviceaccount.identity.linkerd.cluster.local"
GRPC_REQ = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "api.shop:8080"),
    (":path", "/shop.Orders/Create"),
    ("content-type", "application/grpc"),
    ("l5d-client-id", CALLER),
]


def test_grpc_streams_paired_with_trailers() -> None:
    c = Conversation()
    c.handshake()
    c2s, s2c = h2_exchange([(GRPC_REQ, b"\0\0\0\0\3abc"), (GRPC_REQ, b"\0\0\0\0\1z")], grpc=True)
    c.send(True, c2s, mss=11)
    c.send(False, s2c, mss=13)
    c.fin()
    got, m = run(c.packets)
    assert [(o.protocol, o.grpc_service, o.grpc_method, o.status, o.body) for o in got] == [
        ("grpc", "shop.Orders", "Create", 200, b"\0\0\0\0\3abc"),
        ("grpc", "shop.Orders", "Create", 200, b"\0\0\0\0\1z"),
    ]
    assert ("grpc-status", "0") in got[0].response_headers
    assert got[0].header("l5d-client-id") == CALLER and got[0].authority == "api.shop:8080"
    assert m.parse_errors == 0


def test_plain_h2_and_small_header_table() -> None:
    req = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", "/x?q=1"),
        ("user-agent", "u" * 50),
    ]
    c = Conversation()
    c.handshake()
    c2s, s2c = h2_exchange([(req, b"")] * 4, status="404", table_size=64)
    c.send(True, c2s)
    c.send(False, s2c)
    c.fin()
    got, m = run(c.packets)
    assert [(o.protocol, o.method, o.path, o.query, o.status) for o in got] == [
        ("h2", "GET", "/x", "q=1", 404)
    ] * 4
    assert m.parse_errors == 0


def test_settings_table_size_limits_the_other_decoder() -> None:
    p = Http2Parser(lambda o: None, NodeTapCounters())
    settings = SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 100})
    p.feed(True, PREFACE + settings.serialize(), 0.0)
    assert p.server.decoder.max_allowed_table_size == 100
    assert p.client.decoder.max_allowed_table_size == 4096
    # the server now announces a larger table than the client allowed: a decoding error
    enc = hpack.Encoder()
    enc.header_table_size = 4096
    block = enc.encode([(":status", "200")])
    h = HeadersFrame(1, block, flags=["END_HEADERS"])
    p.feed(False, h.serialize(), 0.0)
    assert p.broken


def test_midstream_h2_is_unparseable() -> None:
    c = Conversation()
    c2s, s2c = h2_exchange([(GRPC_REQ, b"\0\0\0\0\0")], grpc=True)
    c.send(True, c2s[len(PREFACE) + 40 :])  # no SYN, no preface
    c.send(False, s2c[30:])
    got, m = run(c.packets)
    assert got == [] and m.midstream_skipped == 2 and m.flows == 0  # counted, no state kept


def test_broken_frames_counted() -> None:
    for junk in (b"\0\0\x05\x01\x04\0\0\0\x01\xff\xff\xff\xff\xff", b"\xff" * 40):
        m = NodeTapCounters()
        got: list = []
        p = Http2Parser(got.append, m)
        p.feed(True, PREFACE + junk, 0.0)
        assert m.parse_errors == 1 and p.broken


def test_header_bytes_that_are_not_utf8_do_not_blind_the_connection() -> None:
    """h2 lets a field value carry any octet but NUL, CR and LF, and linkerd-proxy passes them
    on: one request with a latin-1 byte must not end the parsing of a connection that carries
    everyone's later requests (the attack after it was invisible)."""
    first = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"api"),
        (b":path", b"/a"),
        (b"x-name", b"caf\xe9"),
    ]
    attack = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "api"),
        (":path", "/items?id=1%27%20or%201=1--"),
    ]
    c = Conversation()
    c.handshake()
    c2s, s2c = h2_exchange([(first, b""), (attack, b"")])  # type: ignore[list-item]
    c.send(True, c2s)
    c.send(False, s2c)
    c.fin()
    got, m = run(c.packets)
    assert [o.path for o in got] == ["/a", "/items"] and m.parse_errors == 0
    assert got[0].header("x-name") == "caf\ufffd" and got[1].query == "id=1%27%20or%201=1--"
