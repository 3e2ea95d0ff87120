"""Build real wire-format frames for the decoder and detector tests (checksums included)."""

from __future__ import annotations

import socket
import struct

from meshward.tap.node.packet import Packet

ZERO_MAC = b"\x00" * 6


def is_fragment(p: Packet) -> bool:
    """A decoded packet that is one fragment of an IP datagram (the first, a middle or the last)."""
    return p.more_fragments or p.frag_offset > 0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ether(ip: bytes, ethertype: int | None = None, vlan: int | None = None) -> bytes:
    if ethertype is None:
        ethertype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return ZERO_MAC + ZERO_MAC + tag + struct.pack("!H", ethertype) + ip


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ident: int = 1,
    frag_offset: int = 0,
    mf: bool = False,
    ttl: int = 64,
    total: int | None = None,
) -> bytes:
    length = 20 + len(payload) if total is None else total
    frag = (frag_offset // 8) | (0x2000 if mf else 0)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length,
        ident,
        frag,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(
    src: str,
    dst: str,
    nxt: int,
    payload: bytes,
    *,
    frag: tuple[int, bool, int] | None = None,
    hops: int = 64,
) -> bytes:
    """`frag` = (offset in bytes, more fragments, identification) adds a fragment header."""
    if frag is not None:
        off, mf, ident = frag
        payload = struct.pack("!BxHI", nxt, off | int(mf), ident) + payload
        nxt = 44
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), nxt, hops)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data


def icmp(itype: int, code: int, ident: int, seq: int, data: bytes = b"") -> bytes:
    body = struct.pack("!BBHHH", itype, code, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def icmp_unreachable(orig_ip: bytes, code: int = 3) -> bytes:
    """ICMP destination unreachable quoting `orig_ip` (header + 8 bytes), as a kernel sends it."""
    body = struct.pack("!BBHI", 3, code, 0, 0) + orig_ip[:28]
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def fragment_v4(
    src: str, dst: str, proto: int, datagram: bytes, size: int, ident: int
) -> list[bytes]:
    """Split an L4 datagram into IPv4 fragments of `size` bytes (a multiple of 8)."""
    out = []
    for off in range(0, len(datagram), size):
        chunk = datagram[off : off + size]
        mf = off + size < len(datagram)
        out.append(ipv4(src, dst, proto, chunk, ident=ident, frag_offset=off, mf=mf))
    return out


def dns_query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    """A DNS query with one question (recursion desired)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".") if p)
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + qname
        + b"\x00"
        + struct.pack("!HH", qtype, 1)
    )


def dns_response(query: bytes, answer: bytes = b"") -> bytes:
    """The response to `query`: same question, QR set, `answer` appended as opaque records."""
    ident, _flags, qd, _an, ns, ar = struct.unpack_from("!HHHHHH", query)
    return (
        struct.pack("!HHHHHH", ident, 0x8180, qd, 1 if answer else 0, ns, ar)
        + query[12:]
        + (answer)
    )
