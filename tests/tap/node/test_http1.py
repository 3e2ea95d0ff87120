"""HTTP/1.x reconstruction through the flow table, from synthetic TCP conversations."""

from __future__ import annotations

import random

from meshward.core.observation import Observation
from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.flows import FlowTable
from tests.support.traffic import Conversation, packet, run

CALLER = "web.shop.serviceaccount.identity.linkerd.cluster.local"


def test_keepalive_pipelining_chunked_head() -> None:
    c = Conversation()
    c.handshake()
    c.send(
        True,
        (
            f"GET /a?x=1 HTTP/1.1\r\nHost: api\r\nl5d-client-id: {CALLER}\r\n\r\n"
            "HEAD /b HTTP/1.1\r\nHost: api\r\n\r\n"
            "POST /c HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        ).encode(),
        mss=9,
    )
    c.send(
        False,
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # HEAD: no body despite the length
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        ),
        mss=7,
    )
    c.fin()
    got, m = run(c.packets)
    assert [(o.method, o.path, o.query, o.status) for o in got] == [
        ("GET", "/a", "x=1", 200),
        ("HEAD", "/b", "", 200),
        ("POST", "/c", "", 201),
    ]
    assert got[0].header("l5d-client-id") == CALLER and got[0].authority == "api"
    assert got[2].body == b"abcde" and got[2].body_size == 5
    assert m.transactions == 3 and m.parse_errors == 0 and m.unanswered == 0


def test_100_continue_and_shuffled_duplicated_segments() -> None:
    c = Conversation()
    c.handshake()
    c.send(
        True, b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    c.send(False, b"HTTP/1.1 100 Continue\r\n\r\n")
    c.send(True, b"data")
    c.send(False, b"HTTP/1.1 204 No Content\r\n\r\n")
    c.send(True, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", mss=5)
    c.send(False, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", mss=5)
    c.fin()
    pkts = c.packets[:2] + c.packets[2:] + c.packets[3:7]  # retransmits
    rest = pkts[2:]
    random.Random(1).shuffle(rest)
    got, _m = run(pkts[:2] + rest)
    assert [(o.method, o.path, o.status, o.body) for o in got] == [
        ("PUT", "/up", 204, b"data"),
        ("GET", "/next", 304, b""),
    ]


def test_upgrade_stops_parsing() -> None:
    c = Conversation()
    c.handshake()
    c.send(
        True, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    c.send(
        False,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    c.send(True, b"\x81\x05hello GET / HTTP/1.1\r\n\r\n")
    c.send(False, b"\x81\x02hi")
    got, m = run(c.packets)
    assert [(o.method, o.path, o.status) for o in got] == [("GET", "/ws", 101)]
    assert m.upgraded >= 1 and m.parse_errors == 0


def test_gap_resynchronises_at_next_request() -> None:
    c = Conversation()
    c.handshake()
    c.send(True, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    lost = c.send(True, b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    lost += c.send(False, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    c.send(True, b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    c.fin()
    got, m = run([p for p in c.packets if p not in lost])
    assert [(o.method, o.path, o.status) for o in got] == [
        ("GET", "/one", 200),
        ("GET", "/three", 202),
    ]
    assert m.gaps == 2


def test_joined_midstream_counts_and_resyncs() -> None:
    c = Conversation()
    c.send(True, b"ly: the end of an earlier body\r\n")  # no SYN seen: joined mid-way
    c.send(False, b"tail of a response")
    c.send(True, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    got, m = run(c.packets)
    assert m.midstream == 1
    assert [(o.method, o.path, o.status, o.extra.get("midstream")) for o in got] == [
        ("GET", "/after", 200, None)
    ]


def test_garbage_is_counted() -> None:
    c = Conversation()
    c.handshake()
    c.send(True, b"\x16\x03\x01 not http at all\r\n\r\n")
    c.send(False, b"\x15\x03\x01 nope")
    got, m = run(c.packets)
    assert got == [] and m.parse_errors >= 1


def test_rst_emits_unanswered_request() -> None:
    c = Conversation()
    c.handshake()
    c.send(True, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    c.rst()
    got, m = run(c.packets)
    assert [(o.path, o.status) for o in got] == [("/slow", None)]
    assert m.unanswered == 1


def test_flow_table_is_bounded_and_expires() -> None:
    got: list[Observation] = []
    m = NodeTapCounters()
    table = FlowTable(lambda o, c: got.append(o), m, max_flows=3, idle_timeout=100)
    for i in range(5):  # a SYN flood: handshakes that never carry data make room
        table.packet(packet(("10.0.0.1", 1000 + i), ("10.0.0.2", 80), 1, 0x02, ts=1.0), "pod")
    assert m.flows == 5 and m.flows_evicted == 2 and len(table.flows) == 6
    busy = Conversation(client=("10.0.0.9", 5000), server=("10.0.0.2", 80))
    for p in busy.handshake() + busy.send(True, b"GET / HTTP/1.1\r\n\r\n"):
        table.packet(p, "pod")  # evicts one more data-less flow, then carries data
    for i in range(3):
        pkts = Conversation(client=("10.0.0.3", 2000 + i), server=("10.0.0.2", 80)).handshake()
        table.packet(pkts[0], "pod")
    assert m.flows_evicted == 6  # 3 more evictions of data-less flows; the busy one stays
    assert any(c.parser is not None for c in table.flows.values())
    table.expire(12.0)  # data-less flows go after unused_timeout, the busy one stays
    assert len(table.flows) == 2
    table.expire(200.0)
    assert not table.flows


def test_response_until_close_and_chunked_trailers() -> None:
    c = Conversation()
    c.handshake()
    c.send(True, b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(
        False,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
        mss=6,
    )
    c.send(True, b"GET /old HTTP/1.0\r\n\r\n")
    c.send(False, b"HTTP/1.0 200 OK\r\n\r\nbody until the connection closes HTTP/1.1 200")
    c.fin()
    got, m = run(c.packets)
    assert [(o.path, o.status) for o in got] == [("/t", 200), ("/old", 200)]
    assert ("x-checksum", "abc") in got[0].response_headers
    assert m.parse_errors == 0 and m.unanswered == 0


def test_lost_segment_is_given_up_after_gap_timeout() -> None:
    got: list[Observation] = []
    m = NodeTapCounters()
    table = FlowTable(lambda o, c: got.append(o), m, gap_timeout=1.0)
    c = Conversation()
    c.handshake()
    c.send(True, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    lost = c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    c.send(True, b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    for p in c.packets:
        if p not in lost:
            table.packet(p, "pod")
    assert got == []  # /two's response waits behind the hole
    table.expire(3.0)  # packets carry ts=1.0: the hole is older than gap_timeout
    assert [(o.path, o.status) for o in got] == [("/one", None), ("/two", 201)]
    assert m.gaps == 1


def test_endless_request_head_is_cut() -> None:
    c = Conversation()
    c.handshake()
    c.send(True, b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 600_000, mss=1400)
    c.send(True, b"a" * 1400)
    c.send(True, b"\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    got, m = run(c.packets)
    assert m.parse_errors == 1
    assert [(o.path, o.status) for o in got] == [("/next", 200)]


def test_long_headers_cannot_hide_a_request() -> None:
    """Padding a request with 100 KB of headers (hyper forwards heads up to ~400 KiB) cut it
    as garbage: the query after the padding went uninspected. The request is seen; the header
    text kept is bounded and flagged."""
    c = Conversation()
    c.handshake()
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
    c.send(
        True,
        b"GET /items?id=1%27%20or%201=1-- HTTP/1.1\r\nHost: a\r\n" + pad + b"\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
        mss=1400,
    )
    c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2)
    got, m = run(c.packets)
    assert [(o.path, o.status) for o in got] == [("/items", 200), ("/next", 200)]
    assert got[0].query == "id=1%27%20or%201=1--" and m.parse_errors == 0
    assert got[0].headers_truncated
    assert sum(len(k) + len(v) for k, v in got[0].headers) <= 64 * 1024


def test_out_of_order_bytes_share_one_budget() -> None:
    m = NodeTapCounters()
    table = FlowTable(lambda o, c: None, m, buffer_budget=100, gap_timeout=60)
    for port in (1, 2):
        c = Conversation(client=("10.0.0.1", 40000 + port))
        c.handshake()
        pkts = c.send(True, b"GET / HTTP/1.1\r\n" + b"x" * 200, mss=16)
        for p in c.packets[:2] + pkts[1:]:  # the first data segment is lost
            table.packet(p, "pod")
    table.expire(1.0)
    assert m.gaps >= 2
    conns = {id(x): x for x in table.flows.values()}.values()
    assert sum(x.c2s.pending_bytes for x in conns) <= 100


def test_large_body_in_one_super_segment() -> None:
    """Loopback GSO hands over segments far larger than the MTU: a whole upload at once."""
    c = Conversation()
    c.handshake()
    body = b"z" * 100_000
    c.send(
        True, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + body, mss=200_000
    )
    c.send(False, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    c.fin()
    got, m = run(c.packets)
    assert [(o.path, o.status, o.body_size, len(o.body), o.body_truncated) for o in got] == [
        ("/big", 413, 100_000, 65536, True)
    ]
    assert m.parse_errors == 0


def test_a_superscript_digit_length_is_no_length() -> None:
    """Latin-1 decodes byte 0xB2 to '²', which isdigit() passes and int() refuses: the response
    parser raised. Such a Content-Length is unknown; the requests around it are still seen."""
    c = Conversation()
    c.handshake()
    c.send(
        True,
        b"GET /a HTTP/1.1\r\nHost: api\r\n\r\nGET /b?q=%27or%201=1 HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    c.send(
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    c.fin()
    got, _ = run(c.packets)
    assert [o.path for o in got] == ["/a", "/b"]


def test_extension_methods_are_seen_and_keep_responses_paired() -> None:
    """RFC 9110 allows any method token and hyper (linkerd-proxy) forwards it; llhttp knows a
    fixed list. A handler that does not check the method serves `GETX /items?id=..`: it went
    unseen, and later responses were paired with the wrong requests."""
    c = Conversation()
    c.handshake()
    c.send(
        True,
        b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n"
        b"GETX /items?id=1%27%20or%201=1-- HTTP/1.1\r\nHost: api\r\n\r\n"
        b"PURGEALL /c HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /d HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\nok",
    )
    c.send(
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    c.fin()
    got, m = run(c.packets)
    assert [(o.method, o.path, o.status) for o in got] == [
        ("GET", "/a", 200),
        ("GETX", "/items", 201),
        ("PURGEALL", "/c", 202),
        ("POST", "/d", 204),
    ]
    assert got[1].query == "id=1%27%20or%201=1--" and got[2].body == b"abc"
    assert m.parse_errors == 0
