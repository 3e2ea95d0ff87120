"""Synthetic TCP conversations as decoded Packets (and raw frames), for the parser tests."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from meshward.core.observation import Observation
from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.flows import ACK, FIN, RST, SYN, FlowTable
from meshward.tap.node.packet import Packet

CLIENT = ("10.213.0.2", 40000)
SERVER = ("10.213.0.2", 8080)


def packet(
    src: tuple[str, int],
    dst: tuple[str, int],
    seq: int,
    flags: int,
    data: bytes = b"",
    ts: float = 1.0,
) -> Packet:
    return Packet(
        ts,
        4,
        src[0],
        dst[0],
        6,
        64,
        40 + len(data),
        0,
        0,
        False,
        src[1],
        dst[1],
        seq & 0xFFFFFFFF,
        0,
        flags,
        65535,
        0,
        0,
        0,
        0,
        memoryview(data),
        54 + len(data),
    )


def frame(pkt: Packet) -> bytes:
    """The Ethernet/IPv4/TCP frame of a Packet (checksums zero: capture does not check them)."""
    payload = bytes(pkt.payload)
    tcp = struct.pack(
        "!HHIIBBHHH",
        pkt.sport,
        pkt.dport,
        pkt.tcp_seq,
        pkt.tcp_ack,
        5 << 4,
        pkt.tcp_flags,
        65535,
        0,
        0,
    )
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0x4000,
        64,
        6,
        0,
        socket.inet_aton(pkt.src),
        socket.inet_aton(pkt.dst),
    )
    return b"\0" * 12 + b"\x08\x00" + ip + tcp + payload


@dataclass
class Conversation:
    """Both ends of one TCP connection; send() returns the packets that carried the bytes."""

    client: tuple[str, int] = CLIENT
    server: tuple[str, int] = SERVER
    cseq: int = 1000
    sseq: int = 0xFFFFFF00  # wraps around 2**32 soon
    mss: int = 1400
    packets: list[Packet] = field(default_factory=list)

    def handshake(self) -> list[Packet]:
        out = [
            packet(self.client, self.server, self.cseq, SYN),
            packet(self.server, self.client, self.sseq, SYN | ACK),
        ]
        self.cseq += 1
        self.sseq += 1
        self.packets += out
        return out

    def send(self, from_client: bool, data: bytes, mss: int | None = None) -> list[Packet]:
        mss = mss or self.mss
        out = []
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            if from_client:
                out.append(packet(self.client, self.server, self.cseq, ACK, chunk))
                self.cseq += len(chunk)
            else:
                out.append(packet(self.server, self.client, self.sseq, ACK, chunk))
                self.sseq += len(chunk)
        self.packets += out
        return out

    def fin(self) -> list[Packet]:
        out = [
            packet(self.client, self.server, self.cseq, FIN | ACK),
            packet(self.server, self.client, self.sseq, FIN | ACK),
        ]
        self.packets += out
        return out

    def rst(self) -> list[Packet]:
        out = [packet(self.client, self.server, self.cseq, RST)]
        self.packets += out
        return out


def h2_exchange(
    requests: list[tuple[list[tuple[str, str]], bytes]],
    status: str = "200",
    grpc: bool = False,
    table_size: int | None = None,
) -> tuple[bytes, bytes]:
    """Real HTTP/2 bytes (client->server, server->client) made by the h2 library."""
    import h2.config
    import h2.connection
    import h2.events

    cli = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    srv = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
    )
    cli.initiate_connection()
    if table_size is not None:
        cli.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table_size})
    srv.initiate_connection()
    c2s = b""
    s2c = b""
    for headers, body in requests:
        sid = cli.get_next_available_stream_id()
        cli.send_headers(sid, headers, end_stream=not body)
        if body:
            cli.send_data(sid, body, end_stream=True)
    out = cli.data_to_send()
    c2s += out
    for ev in srv.receive_data(out):
        if isinstance(ev, h2.events.StreamEnded):
            sid = ev.stream_id
            if grpc:
                srv.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                srv.send_data(sid, b"\0\0\0\0\2\x08\x01")
                srv.send_headers(sid, [("grpc-status", "0")], end_stream=True)
            else:
                srv.send_headers(sid, [(":status", status), ("content-length", "2")])
                srv.send_data(sid, b"ok", end_stream=True)
    s2c += srv.data_to_send()
    cli.receive_data(s2c)
    c2s += cli.data_to_send()
    return c2s, s2c


def run(packets: list, table: FlowTable | None = None) -> tuple[list[Observation], NodeTapCounters]:
    """Feed packets through a flow table (the node tap's parsers); the observations and counters."""
    got: list[Observation] = []
    m = NodeTapCounters()
    table = table or FlowTable(lambda o, c: got.append(o), m)
    for p in packets:
        table.packet(p, "pod")
    table.close_all()
    return got, m
