"""The TCP flow table: packets in, per-connection byte streams, HTTP parsers, Observations out.

Each connection is stored under both directions' 4-tuples, so one dict lookup per packet finds
it. The client is whoever sent the SYN; a connection joined without its SYN is counted
(`midstream`) and parsed as HTTP/1.x resynchronised at the next message boundary (HTTP/2 cannot
be joined: its HPACK state is unknown). The table is bounded: when full, the oldest connection
that never carried data makes room (else the new one is not tracked; both counted), idle ones
expire (those without data sooner), and a stream whose missing bytes never
arrive gives up on them after `gap_timeout`, or sooner when all connections together buffer
more than `buffer_budget` out-of-order bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshward.core.observation import Observation
from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.http1 import Http1Parser
from meshward.tap.node.http2 import PREFACE, Http2Parser
from meshward.tap.node.packet import Packet
from meshward.tap.node.reassembly import Stream

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
# a connection joined without its SYN is only tracked from a segment that starts a message
_MESSAGE_START = re.compile(rb"[A-Z]{3,7} [!-~]+ HTTP/1\.[01]\r\n|HTTP/1\.[01] [1-5]\d\d ")
_MAX_EARLY = 65536  # server bytes buffered before the client's first bytes pick the protocol


class Connection:
    """One TCP connection: two reassembled streams feeding one HTTP parser."""

    __slots__ = (
        "c2s",
        "client",
        "early",
        "last_seen",
        "max_body",
        "metrics",
        "midstream",
        "on_obs",
        "parser",
        "s2c",
        "server",
        "ts",
        "where",
    )

    def __init__(
        self,
        where: str,
        client: tuple[str, int],
        server: tuple[str, int],
        on_obs: Callable[[Observation, Connection], None],
        metrics: NodeTapCounters,
        max_body: int,
    ) -> None:
        self.where = where
        self.client = client
        self.server = server
        self.on_obs = on_obs
        self.metrics = metrics
        self.ts = 0.0
        self.last_seen = 0.0
        self.midstream = False
        self.parser: Http1Parser | Http2Parser | None = None
        self.early: list[bytes] = []  # server bytes seen before the protocol is known
        self.c2s = Stream(lambda d: self._data(True, d), lambda: self._gap(True))
        self.s2c = Stream(lambda d: self._data(False, d), lambda: self._gap(False))
        self.max_body = max_body

    def _emit(self, obs: Observation) -> None:
        self.on_obs(obs, self)

    def _data(self, from_client: bool, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            if not from_client:
                if sum(map(len, self.early)) < _MAX_EARLY:
                    self.early.append(data)
                return
            parser = self._choose(data)
            for chunk in self.early:
                parser.feed(False, chunk, self.ts)
            self.early = []
        parser.feed(from_client, data, self.ts)

    def _choose(self, first: bytes) -> Http1Parser | Http2Parser:
        n = min(len(first), len(PREFACE))
        parser: Http1Parser | Http2Parser
        if not self.midstream and first[:n] == PREFACE[:n]:
            parser = Http2Parser(self._emit, self.metrics, self.max_body)
        else:
            parser = Http1Parser(self._emit, self.metrics, self.max_body)
            if self.midstream:  # joined late: counted as midstream, not as gaps
                parser.resync(True)
                parser.resync(False)
        self.parser = parser
        return parser

    def _gap(self, from_client: bool) -> None:
        if self.parser is None:  # nothing parsed yet: the parser will start resynchronising
            if not self.midstream:
                self.metrics.gaps += 1  # a hole after the SYN (a join is counted as midstream)
            self.midstream = True
            return
        self.parser.gap(from_client)

    def close(self) -> None:
        """Deliver what is buffered (skipping holes), then let the parser emit the rest."""
        self.c2s.flush()
        self.s2c.flush()
        if self.parser is not None:
            self.parser.close()


ObsFn = Callable[[Observation, Connection], None]


class FlowTable:
    """All tracked TCP connections of every capture (keyed by where + 4-tuple)."""

    def __init__(
        self,
        on_obs: ObsFn,
        metrics: NodeTapCounters,
        max_flows: int = 20000,
        idle_timeout: float = 120.0,
        gap_timeout: float = 1.0,
        max_body: int = 65536,
        buffer_budget: int = 256 << 20,
        unused_timeout: float = 10.0,
    ) -> None:
        self.on_obs = on_obs
        self.unused_timeout = unused_timeout  # handshakes that never carried data
        self.buffer_budget = buffer_budget
        self.metrics = metrics
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.gap_timeout = gap_timeout
        self.max_body = max_body
        self.flows: dict[tuple[str, str, int, str, int], Connection] = {}

    def packet(self, pkt: Packet, where: str) -> None:
        """Account one decoded TCP packet."""
        key = (where, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        conn = self.flows.get(key)
        flags = pkt.tcp_flags
        if conn is None:
            conn = self._new(pkt, where, flags)
            if conn is None:
                return
        conn.ts = conn.last_seen = pkt.ts
        from_client = pkt.src == conn.client[0] and pkt.sport == conn.client[1]
        stream = conn.c2s if from_client else conn.s2c
        if flags & SYN:
            stream.syn(pkt.tcp_seq)
        elif pkt.payload or flags & FIN:
            stream.segment(pkt.tcp_seq, pkt.payload, bool(flags & FIN))
        if flags & RST or (conn.c2s.finished and conn.s2c.finished):
            self._remove(conn)

    def _new(self, pkt: Packet, where: str, flags: int) -> Connection | None:
        if flags & RST or not (flags & SYN or pkt.payload):
            return None  # stray ACK/RST of a connection we do not know: nothing to parse
        if not flags & SYN and _MESSAGE_START.match(pkt.payload) is None:
            self.metrics.midstream_skipped += 1  # cheap: no state for what we cannot parse
            return None
        a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
        if flags & SYN:
            client, server = (a, b) if not flags & ACK else (b, a)
        else:  # joined mid-way: the listening side usually has the lower port
            client, server = (a, b) if pkt.sport > pkt.dport else (b, a)
        if len(self.flows) >= 2 * self.max_flows and not self._evict_unused():
            self.metrics.flows_evicted += 1  # full of connections carrying data: refuse
            return None
        conn = Connection(where, client, server, self.on_obs, self.metrics, self.max_body)
        if not flags & SYN:
            conn.midstream = True
            self.metrics.midstream += 1
        self.flows[(where, *client, *server)] = conn
        self.flows[(where, *server, *client)] = conn
        self.metrics.flows += 1
        self.metrics.flows_active += 1
        return conn

    def _evict_unused(self) -> bool:
        """Make room by dropping the oldest connection that never carried data (a SYN flood
        must not blind the tap to real connections); False if there is none."""
        for conn in self.flows.values():
            if conn.parser is None and not conn.early:
                self.metrics.flows_evicted += 1
                self._remove(conn)
                return True
        return False

    def _remove(self, conn: Connection) -> None:
        self.flows.pop((conn.where, *conn.client, *conn.server), None)
        self.flows.pop((conn.where, *conn.server, *conn.client), None)
        self.metrics.flows_active -= 1
        conn.close()

    def expire(self, now: float) -> None:
        """Close idle connections; give up on holes that stayed open past gap_timeout."""
        conns = list({id(c): c for c in self.flows.values()}.values())
        for conn in conns:
            idle = now - conn.last_seen
            if idle > self.idle_timeout or (conn.parser is None and idle > self.unused_timeout):
                self.metrics.flows_expired += 1
                self._remove(conn)
            elif idle > self.gap_timeout:
                for stream in (conn.c2s, conn.s2c):
                    if stream.pending:
                        stream.flush()
        self._enforce_budget([c for c in conns if c.last_seen >= now - self.idle_timeout])

    def _enforce_budget(self, conns: list[Connection]) -> None:
        """Out-of-order bytes of all connections together stay under `buffer_budget`: the
        streams holding the most give up their holes first (counted as gaps)."""
        total = sum(c.c2s.pending_bytes + c.s2c.pending_bytes for c in conns)
        if total <= self.buffer_budget:
            return
        streams = sorted(
            (s for c in conns for s in (c.c2s, c.s2c) if s.pending_bytes),
            key=lambda s: s.pending_bytes,
            reverse=True,
        )
        for stream in streams:
            total -= stream.pending_bytes
            stream.flush()
            if total <= self.buffer_budget:
                return

    def close_all(self, where: str | None = None) -> None:
        """Close every connection (or those of one capture: a pod that went away)."""
        for conn in {id(c): c for c in self.flows.values()}.values():
            if where is None or conn.where == where:
                self._remove(conn)
