"""Just enough DNS to judge a message: header, first question (name, type), sizes.

Written here rather than taken from dnspython because the network monitor parses every DNS
packet on the node and needs only the question: one bounded pass over the bytes, no objects
beyond the result, None (never an exception) for anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

QTYPE_NULL = 10
QTYPE_TXT = 16
QTYPE_IXFR = 251
QTYPE_AXFR = 252
QTYPE_ANY = 255

_HEADER = struct.Struct("!HHHHHH").unpack_from
_U16x2 = struct.Struct("!HH").unpack_from
_MAX_NAME = 255
_MAX_POINTERS = 16


@dataclass(slots=True)
class DnsMessage:
    """The parts of one DNS message the detectors use."""

    id: int
    is_response: bool
    opcode: int
    rcode: int
    qdcount: int
    ancount: int
    labels: tuple[str, ...]  # first question's name, lower-case, without the root
    qtype: int
    size: int  # message size in bytes

    @property
    def qname(self) -> str:
        return ".".join(self.labels)


def parse(msg: bytes | memoryview) -> DnsMessage | None:
    """Parse a DNS message (UDP payload, or a TCP payload after its 2-byte length)."""
    n = len(msg)
    if n < 12:
        return None
    msg = bytes(msg)  # one small copy: indexing and slicing bytes is cheaper than a memoryview
    ident, flags, qd, an, _ns, _ar = _HEADER(msg, 0)
    if qd == 0:
        return None
    labels, pos = _read_name(msg, 12, n)
    if labels is None or pos + 4 > n:
        return None
    qtype, _qclass = _U16x2(msg, pos)
    return DnsMessage(
        id=ident,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        qdcount=qd,
        ancount=an,
        labels=labels,
        qtype=qtype,
        size=n,
    )


def _read_name(msg: bytes, pos: int, n: int) -> tuple[tuple[str, ...] | None, int]:
    """Labels of the name at `pos` and the offset just past it (compression pointers followed)."""
    labels: list[str] = []
    total = 0
    end = -1  # where the name ends in the message, fixed at the first pointer
    for _ in range(_MAX_POINTERS + 128):
        if pos >= n:
            return None, 0
        length = msg[pos]
        if length == 0:
            return tuple(labels), (pos + 1 if end < 0 else end)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                return None, 0
            if end < 0:
                end = pos + 2
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= pos:  # pointers must go backwards: no loops
                return None, 0
            pos = target
            continue
        if length & 0xC0:
            return None, 0  # reserved label types
        total += length + 1
        if total > _MAX_NAME or pos + 1 + length > n:
            return None, 0
        labels.append(msg[pos + 1 : pos + 1 + length].decode("latin-1").lower())
        pos += 1 + length
    return None, 0


def tcp_message(payload: bytes | memoryview) -> memoryview | None:
    """The DNS message in a TCP segment that starts with the 2-byte length prefix, else None."""
    if len(payload) < 14:
        return None
    length = (payload[0] << 8) | payload[1]
    if length < 12:
        return None
    return memoryview(payload)[2 : 2 + length]
