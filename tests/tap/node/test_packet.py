"""The frame decoder: every field of IPv4/IPv6 TCP, UDP, ICMP, fragments; garbage never raises."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.tap.node.packet import ICMP, ICMPV6, TCP, UDP, decode
from tests.support import frames as f


def test_ipv4_udp_over_ethernet() -> None:
    frame = f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(5353, 53, b"hello"), ident=77))
    p = decode(frame, 1.5)
    assert p is not None
    assert (p.ts, p.ip_version, p.src, p.dst, p.proto) == (1.5, 4, "10.0.0.1", "10.0.0.2", UDP)
    assert (p.sport, p.dport, p.ip_id, p.ttl, p.ip_len) == (5353, 53, 77, 64, 33)
    assert bytes(p.payload) == b"hello"
    assert p.wire_len == len(frame)
    assert not f.is_fragment(p)


def test_ethernet_padding_is_not_payload() -> None:
    frame = f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(1, 2, b"x"))) + b"\x00" * 20
    p = decode(frame, 0.0)
    assert p is not None and bytes(p.payload) == b"x"


def test_vlan_tag_is_skipped() -> None:
    frame = f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(1, 2, b"v")), vlan=42)
    p = decode(frame, 0.0)
    assert p is not None and p.dport == 2 and bytes(p.payload) == b"v"


def test_tcp_fields() -> None:
    seg = f.tcp(40000, 8080, 1000, 2000, 0x18, b"GET / HTTP/1.1\r\n\r\n")
    p = decode(f.ipv4("10.0.0.1", "10.0.0.2", TCP, seg), 0.0, link="raw")
    assert p is not None
    assert (p.sport, p.dport, p.tcp_seq, p.tcp_ack, p.tcp_flags, p.tcp_window) == (
        40000,
        8080,
        1000,
        2000,
        0x18,
        65535,
    )
    assert bytes(p.payload).startswith(b"GET /")


def test_icmp_echo_fields() -> None:
    p = decode(f.ether(f.ipv4("10.0.0.1", "10.0.0.2", ICMP, f.icmp(8, 0, 99, 3, b"abc"))), 0.0)
    assert p is not None
    assert (p.proto, p.icmp_type, p.icmp_code, p.icmp_id, p.icmp_seq) == (ICMP, 8, 0, 99, 3)
    assert bytes(p.payload) == b"abc"


def test_icmp_unreachable_quotes_original() -> None:
    orig = f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(1234, 161, b""))
    p = decode(f.ipv4("10.0.0.2", "10.0.0.1", ICMP, f.icmp_unreachable(orig)), 0.0, link="raw")
    assert p is not None and (p.icmp_type, p.icmp_code, p.icmp_id) == (3, 3, 0)
    assert bytes(p.payload) == orig[:28]


def test_ipv4_fragments() -> None:
    datagram = f.icmp(8, 0, 1, 1, b"A" * 3000)
    frags = f.fragment_v4("10.0.0.1", "10.0.0.2", ICMP, datagram, 1480, ident=4242)
    first, second, last = (decode(f.ether(x), 0.0) for x in frags)
    assert first is not None and second is not None and last is not None
    assert first.more_fragments and first.frag_offset == 0 and first.icmp_type == 8
    assert first.ip_id == 4242 and f.is_fragment(first)
    assert second.frag_offset == 1480 and second.more_fragments and second.icmp_type == 0
    assert bytes(second.payload) == datagram[1480:2960]
    assert last.frag_offset == 2960 and not last.more_fragments
    assert len(last.payload) == len(datagram) - 2960


def test_ipv6_udp_and_icmpv6() -> None:
    p = decode(f.ether(f.ipv6("fd00::1", "fd00::2", UDP, f.udp(1, 53, b"q"))), 0.0)
    assert p is not None and (p.ip_version, p.src, p.dst, p.dport) == (6, "fd00::1", "fd00::2", 53)
    assert bytes(p.payload) == b"q" and p.ip_len == 40 + 9
    p = decode(f.ipv6("fd00::1", "::1", ICMPV6, f.icmp(128, 0, 5, 6, b"zz")), 0.0, link="raw")
    assert p is not None and (p.proto, p.icmp_type, p.icmp_id, p.icmp_seq) == (ICMPV6, 128, 5, 6)


def test_ipv6_fragment_header() -> None:
    data = f.udp(1, 2, b"B" * 100)
    first = decode(f.ipv6("fd00::1", "fd00::2", UDP, data[:64], frag=(0, True, 9)), 0.0, "raw")
    rest = decode(f.ipv6("fd00::1", "fd00::2", UDP, data[64:], frag=(64, False, 9)), 0.0, "raw")
    assert first is not None and rest is not None
    assert (first.proto, first.ip_id, first.more_fragments, first.dport) == (UDP, 9, True, 2)
    assert (rest.frag_offset, rest.more_fragments, rest.sport) == (64, False, 0)
    assert bytes(rest.payload) == data[64:]


def test_ipv6_hop_by_hop_then_udp() -> None:
    hop = struct.pack("!BB6x", UDP, 0)  # next header UDP, length 0 (8 bytes)
    ip = f.ipv6("fd00::1", "fd00::2", 0, hop + f.udp(7, 8, b"h"))
    p = decode(ip, 0.0, link="raw")
    assert p is not None and (p.proto, p.sport, p.dport, bytes(p.payload)) == (UDP, 7, 8, b"h")


def test_not_ip_and_truncated_are_none() -> None:
    good = f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(1, 2, b"data")))
    assert decode(b"", 0.0) is None
    assert decode(good[:12] + b"\x08\x06" + good[14:], 0.0) is None  # ARP
    for cut in range(len(good) - 1):
        assert decode(good[:cut], 0.0) is None, cut
    bad_total = f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(1, 2, b""), total=10))
    assert decode(bad_total, 0.0) is None
    assert decode(b"\x45" + b"\x00" * 3, 0.0, link="raw") is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["ether", "raw"]))
def test_random_bytes_never_raise(data: bytes, link: str) -> None:
    decode(data, 0.0, link)


_valid = st.one_of(
    st.builds(
        lambda d, s: f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(s, 53, d)),
        st.binary(max_size=64),
        st.integers(0, 65535),
    ),
    st.builds(
        lambda d: f.ipv4("10.0.0.1", "10.0.0.2", TCP, f.tcp(1, 2, 3, 4, 2, d)),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda d: f.ipv6("fd00::1", "fd00::2", ICMPV6, f.icmp(128, 0, 1, 1, d)),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda d, o: f.ipv6("fd00::1", "fd00::2", UDP, d, frag=(o * 8, True, 1)),
        st.binary(max_size=64),
        st.integers(0, 8191),
    ),
)


@settings(max_examples=300, deadline=None)
@given(_valid, st.integers(0, 200), st.binary(max_size=4), st.booleans())
def test_truncated_and_mutated_frames_never_raise(
    ip: bytes, cut: int, junk: bytes, ether: bool
) -> None:
    frame = f.ether(ip) if ether else ip
    link = "ether" if ether else "raw"
    assert decode(frame, 0.0, link) is not None
    decode(frame[:cut], 0.0, link)
    pos = cut % len(frame)
    decode(frame[:pos] + junk + frame[pos + len(junk) :], 0.0, link)
