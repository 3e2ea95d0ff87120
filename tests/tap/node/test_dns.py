"""The DNS question parser: real messages, compression, and garbage that must never raise."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.tap.node import dns
from tests.support import frames as f


def test_query_question() -> None:
    m = dns.parse(f.dns_query("WWW.Example.com", dns.QTYPE_TXT, ident=7))
    assert m is not None
    assert (m.id, m.is_response, m.qtype, m.qname) == (7, False, dns.QTYPE_TXT, "www.example.com")
    assert m.labels == ("www", "example", "com")


def test_response_flag_and_root_name() -> None:
    m = dns.parse(f.dns_response(f.dns_query(".", dns.QTYPE_ANY), b"\x00" * 30))
    assert m is not None and m.is_response and m.labels == () and m.qtype == dns.QTYPE_ANY
    assert m.ancount == 1 and m.size == 12 + 1 + 4 + 30


def test_compression_pointer_backwards_only() -> None:
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    tail = b"\x00\x01\x00\x01"
    assert dns.parse(header + b"\xc0\x0c" + tail) is None  # points at itself
    assert dns.parse(header + b"\x01a\xc0\x20" + tail + b"\x00" * 20) is None  # forwards
    # backwards (here onto a zero byte of the header, the root): followed
    m = dns.parse(header + b"\x01a\xc0\x0b" + tail)
    assert m is not None and m.labels == ("a",) and m.qtype == 1


def test_truncated_and_tcp_framing() -> None:
    q = f.dns_query("zone.test", dns.QTYPE_AXFR)
    for cut in range(len(q) - 1):
        assert dns.parse(q[:cut]) is None
    framed = struct.pack("!H", len(q)) + q
    raw = dns.tcp_message(framed)
    assert raw is not None and dns.parse(raw).qtype == dns.QTYPE_AXFR  # type: ignore[union-attr]
    assert dns.tcp_message(b"\x00\x03abc" + b"\x00" * 20) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    dns.parse(data)
    raw = dns.tcp_message(data)
    if raw is not None:
        dns.parse(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abcxyz0189-", min_size=1, max_size=63), min_size=1, max_size=4),
    st.integers(0, 65535),
    st.binary(max_size=8),
    st.integers(0, 80),
)
def test_mutated_queries_never_raise(labels: list[str], qtype: int, junk: bytes, pos: int) -> None:
    q = f.dns_query(".".join(labels), qtype)
    m = dns.parse(q)
    assert m is not None and m.qtype == qtype and m.labels == tuple(labels)
    dns.parse(q[:pos] + junk + q[pos + len(junk) :])


def test_pointer_cycle_is_bounded() -> None:
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    # "a" then a pointer back to the "a": every jump goes backwards, the name never ends
    assert dns.parse(header + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01") is None
