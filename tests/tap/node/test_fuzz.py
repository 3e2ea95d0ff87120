"""Fuzzing the node tap's packet path: random/truncated packets, random bytes on the HTTP
ports, broken HTTP/2 frames. Everything is counted; nothing raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.flows import ACK, FIN, RST, SYN, FlowTable
from meshward.tap.node.http2 import PREFACE, Http2Parser
from meshward.tap.node.packet import TCP, decode
from tests.support.traffic import Conversation, frame, h2_exchange, packet, run

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HTTP = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b?q=1 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
)
HTTP_RESP = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def feed_frames(frames: list[bytes]) -> NodeTapCounters:
    m = NodeTapCounters()
    table = FlowTable(lambda o, c: None, m, max_flows=50)
    for f in frames:
        pkt = decode(f, 1.0)
        if pkt is None:
            m.undecodable += 1
        elif pkt.proto == TCP:
            table.packet(pkt, "pod")
    table.expire(1000.0)
    table.close_all()
    return m


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_random_frames(frames: list[bytes]) -> None:
    feed_frames(frames)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2**32 - 1)), max_size=20),
    st.sampled_from([0, SYN, ACK, SYN | ACK, FIN | ACK, RST]),
)
def test_truncated_and_mangled_tcp_frames(cuts: list[tuple[int, int]], flags: int) -> None:
    frames = []
    for cut, seq in cuts:
        pkt = packet(("10.0.0.1", 40000), ("10.0.0.2", 8080), seq, flags | ACK, HTTP[:cut])
        frames.append(frame(pkt)[: 14 + 40 + cut // 2] if cut % 3 == 0 else frame(pkt))
    feed_frames(frames)


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=300)), max_size=12))
def test_random_bytes_on_http_ports(chunks: list[tuple[bool, bytes]]) -> None:
    c = Conversation()
    c.handshake()
    for from_client, data in chunks:
        c.send(from_client, data, mss=64)
    c.fin()
    got, m = run(c.packets)
    assert m.transactions == len(got)


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 400))
def test_random_bytes_after_a_valid_request(junk: bytes, at: int) -> None:
    c = Conversation()
    c.handshake()
    c.send(True, HTTP[:at] + junk + HTTP)
    c.send(False, HTTP_RESP + junk)
    c.fin()
    run(c.packets)


@FUZZ
@given(st.lists(st.integers(0, 1000), max_size=30), st.randoms(use_true_random=False))
def test_reordered_duplicated_segments_give_the_same_exchanges(dups: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    c = Conversation()
    c.handshake()
    c.send(True, HTTP, mss=7)
    c.send(False, HTTP_RESP, mss=5)
    c.fin()
    expected, _ = run(c.packets)
    body = c.packets[2:]
    body = body + [body[d % len(body)] for d in dups]
    rnd.shuffle(body)
    got, _ = run(c.packets[:2] + body)
    key = [(o.method, o.path, o.status, o.body) for o in expected]
    assert key == [("GET", "/a", 200, b""), ("POST", "/b", 201, b"body")]
    assert [(o.method, o.path, o.status, o.body) for o in got] == key


GRPC = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "a"),
    (":path", "/s.S/M"),
    ("content-type", "application/grpc"),
]
H2_C2S, H2_S2C = h2_exchange([(GRPC, b"\0\0\0\0\2hi")] * 3, grpc=True)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(H2_C2S) + len(H2_S2C) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_broken_http2_frames(flips: list[tuple[int, int]]) -> None:
    data = bytearray(H2_C2S + H2_S2C)
    for pos, value in flips:
        data[pos] = value
    m = NodeTapCounters()
    got: list = []
    p = Http2Parser(got.append, m)
    p.feed(True, bytes(data[: len(H2_C2S)]), 0.0)
    p.feed(False, bytes(data[len(H2_C2S) :]), 0.0)
    p.close()
    assert m.transactions == len(got) <= 3


@FUZZ
@given(st.binary(max_size=500))
def test_random_http2_frames(junk: bytes) -> None:
    p = Http2Parser(lambda o: None, NodeTapCounters())
    p.feed(True, PREFACE + junk, 0.0)
    p.feed(False, junk, 0.0)
    p.close()
