"""Threats in the ICMP, UDP and DNS traffic no mesh proxy sees, judged packet by packet.

`NetworkMonitor.feed` takes each decoded packet (tap.node.packet) and returns alert
Observations (seen_by "node-tap", protocol icmp|udp|dns, one Threat located at "network");
`tick` expires state and closes deduplication windows. Alerts are deduplicated per threat name
and address pair: the first detection is reported at once, later ones in the same dedup window
are counted and reported as one summary when the window closes.

Memory is bounded everywhere: rate and scan counters live in fixed time windows that are
cleared when the window rolls, every table has a cap (keys past it are not tracked and are
counted in `stats["untracked"]`), echo and fragment buffers are capped and expire. A flood
with random spoofed sources therefore costs CPU, never unbounded memory.

Detectors (names in the threat registry, docs/detection.md):
  ICMP.Flood            ICMP (not replies or errors) per source→destination over `rate_window`;
                        also per destination from many sources (spoofed/distributed floods).
  Ping.Death            a fragment reaching past the IP size limit (65535 bytes).
  ICMP.Tunneling        an echo reply whose payload differs from its request's, or a large
                        echo payload that looks random.
  UDP.Flood             UDP per source→destination (and per destination from many sources).
  UDP.Port.Scan         many destination ports probed per source→destination, or many ICMP
                        port-unreachable replies to one source.
  DNS.Tunneling         long or random-looking labels, many unique subdomains of one domain,
                        bursts of TXT/NULL queries.
  DNS.Amplification     ANY queries; responses much larger than the requests between a pair.
  DNS.Zone.Transfer     AXFR/IXFR queries (UDP, or TCP port 53).
  IP.Fragment.Teardrop  overlapping fragments of one datagram.
  UDP.New.Peer          a pod workload's UDP peer (direction, peer, service port) that its
                        learned baseline lacks, in monitor and enforce modes; learn mode
                        extends it. Inbound peers that are not pods count as one, "external".
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as _copy

from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats import names
from meshward.tap.node import dns
from meshward.tap.node.dedup import AlertDedup
from meshward.tap.node.netstate import Datagram, Window, entropy, expire, randomness
from meshward.tap.node.packet import ICMP, ICMPV6, TCP, UDP, Packet

_ECHO_REQUEST = frozenset(((ICMP, 8), (ICMPV6, 128)))
_ECHO_REPLY = frozenset(((ICMP, 0), (ICMPV6, 129)))
# ICMP errors (v4: unreachable, source quench, redirect, time exceeded, parameter problem;
# v6: unreachable, too big, time exceeded, parameter problem): not counted as flood traffic
_ICMP_ERRORS = {ICMP: frozenset((3, 4, 5, 11, 12)), ICMPV6: frozenset((1, 2, 3, 4))}
_PORT_UNREACHABLE = frozenset(((ICMP, 3, 3), (ICMPV6, 1, 4)))
_IPV4_MAX = 65535
_L4_HEADER = {TCP: 20, UDP: 8, ICMP: 8, ICMPV6: 8}  # TCP options unknown: never overcounts
_MANY = "*"  # source address of an alert about traffic from many sources


@dataclass(slots=True)
class NetThreatConfig:
    """Thresholds and table sizes. Rates are counted in fixed windows of the given length."""

    dedup_window: float = 10.0  # seconds one alert per (threat, source, destination) covers
    rate_window: float = 1.0
    icmp_flood_pps: int = 200  # ICMP packets per source→destination per rate window
    udp_flood_pps: int = 2000
    flood_sources: int = 16  # distinct sources that make a per-destination flood "distributed"
    scan_window: float = 5.0
    scan_ports: int = 20  # distinct UDP destination ports per source→destination
    scan_unreachables: int = 10  # distinct ports in ICMP port-unreachables to one source
    echo_timeout: float = 10.0  # how long an echo request waits for its reply
    icmp_tunnel_min_payload: int = 128  # bytes; smaller echo payloads are not judged random
    icmp_tunnel_entropy: float = 6.0  # bits per byte
    dns_ports: tuple[int, ...] = (53,)
    dns_window: float = 60.0
    dns_long_label: int = 40  # a label this long is suspicious on its own
    dns_long_name: int = 120
    dns_entropy_min_label: int = 16  # labels at least this long are judged by entropy
    dns_label_entropy: float = 3.8  # bits per character
    dns_suspicious_queries: int = 3  # distinct suspicious labels per client and domain
    dns_unique_subdomains: int = 100  # per client and domain per dns window
    dns_exempt_domains: tuple[str, ...] = ("cluster.local", "in-addr.arpa", "ip6.arpa")
    dns_txt_window: float = 10.0
    dns_txt_queries: int = 20  # TXT/NULL queries per client→server per txt window
    dns_amp_window: float = 10.0
    dns_amp_ratio: float = 10.0  # response bytes / request bytes between a server and a client
    dns_amp_min_bytes: int = 32768  # response bytes per amp window before the ratio counts
    frag_timeout: float = 30.0
    max_datagrams: int = 1024  # fragmented datagrams tracked at once
    max_fragments: int = 128  # fragments remembered per datagram
    max_keys: int = 16384  # keys per windowed counter table
    max_set_keys: int = 4096  # keys per windowed table of distinct-value sets
    max_pending_echo: int = 4096
    max_alert_keys: int = 4096  # open dedup windows
    max_workloads: int = 4096  # workloads with a UDP baseline
    max_peers: int = 1024  # baseline peers per workload

    @classmethod
    def from_dict(cls, data: object) -> NetThreatConfig:
        """Thresholds from a JSON/YAML mapping (unknown keys or wrong types: ValueError)."""
        if not isinstance(data, dict):
            raise ValueError("network threat config must be a mapping")
        out = cls()
        for key, value in data.items():
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown network threat setting {key!r}")
            current = getattr(out, key)
            if isinstance(current, tuple):
                if not isinstance(value, list | tuple):
                    raise ValueError(f"{key} must be a list")
                value = tuple(type(current[0])(v) for v in value) if current else tuple(value)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            elif isinstance(current, int) and value != int(value):
                raise ValueError(f"{key} must be a whole number")
            else:
                value = type(current)(value)
                if value <= 0:
                    raise ValueError(f"{key} must be > 0")
            setattr(out, key, value)
        return out


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NetworkMonitor:
    """ICMP/UDP/DNS threat detectors over decoded packets. Not thread-safe: feed from one thread.

    `resolve(ip)` names the workload behind an address (for alert identities and the UDP
    baseline; default: the bare address); `mode_of(namespace)` is the namespace's mode
    (off|learn|monitor|enforce; default learn; off neither learns nor checks UDP peers).
    """

    def __init__(
        self,
        config: NetThreatConfig | None = None,
        *,
        resolve: Callable[[str], Identity] | None = None,
        mode_of: Callable[[str], str] | None = None,
    ) -> None:
        self.config = c = config or NetThreatConfig()
        self.resolve = resolve or (lambda ip: Identity(ip=ip))
        self._pods = resolve is not None  # without a resolver no address is a pod: no baseline
        self.mode_of = mode_of or (lambda namespace: "learn")
        self.stats: Counter[str] = Counter()
        st = self.stats
        self._rate = Window(c.rate_window, c.max_keys, c.max_set_keys, st)
        self._scan = Window(c.scan_window, c.max_keys, c.max_set_keys, st)
        self._dns = Window(c.dns_window, c.max_keys, c.max_set_keys, st)
        self._txt = Window(c.dns_txt_window, c.max_keys, c.max_set_keys, st)
        self._amp = Window(c.dns_amp_window, c.max_keys, c.max_set_keys, st)
        self._windows = (self._rate, self._scan, self._dns, self._txt, self._amp)
        self._next_roll = 0.0  # when the next window is due
        # UDP flows seen in this and the previous scan window, to tell requests from replies
        self._flows: dict[tuple[str, int, str, int], None] = {}
        self._flows_prev: dict[tuple[str, int, str, int], None] = {}
        self._flows_start = 0.0
        # oldest first; OrderedDict pops its head in O(1) where a dict would scan freed slots
        self._echo: OrderedDict[tuple[str, str, int, int], tuple[float, int]] = OrderedDict()
        self._frags: OrderedDict[tuple[str, str, int, int], Datagram] = OrderedDict()
        self._dedup = AlertDedup(c.dedup_window, c.max_alert_keys, self.stats)
        self._baseline: dict[str, set[tuple[str, str, int]]] = {}
        self.baseline_changes = 0  # bumped per peer learned: a saver writes when it moved
        self._names: dict[str, tuple[Identity, str]] = {}  # ip -> (identity, mode), per window
        self._dns_ports = frozenset(c.dns_ports)
        self._exempt = frozenset(c.dns_exempt_domains)

    # ---- entry points -------------------------------------------------------------------

    def feed(self, pkt: Packet, where: str = "") -> list[Observation]:
        """Judge one packet; returns the alerts it completes (usually none)."""
        self.stats["packets"] += 1
        out: list[Observation] = []
        ts = pkt.ts
        if ts >= self._next_roll or ts < self._rate.start:
            self._roll(ts)
        if pkt.more_fragments or pkt.frag_offset:
            self._fragment(pkt, where, out)
            if pkt.frag_offset:
                return out  # no transport header in later fragments
        proto = pkt.proto
        if proto == UDP:
            self._udp(pkt, where, out)
        elif proto == ICMP or proto == ICMPV6:  # noqa: SIM109 - no tuple per packet
            self._icmp(pkt, where, out)
        elif proto == TCP and (pkt.dport in self._dns_ports) and pkt.payload:
            self._dns_tcp(pkt, where, out)
        return out

    def tick(self, now: float) -> list[Observation]:
        """Expire echo and fragment state, roll idle windows, close due dedup windows."""
        c = self.config
        if now >= self._next_roll:  # forward only: packets' own clock decides about going back
            self._roll(now)
        if now - self._flows_start >= 2 * c.scan_window:
            self._flows_prev = {}
            self._flows = {}
        expire(self._echo, lambda v: now - v[0] > c.echo_timeout)
        expire(self._frags, lambda d: now - d.first > c.frag_timeout)
        return self._dedup.tick(now)

    def _roll(self, now: float) -> None:
        """Start new windows where due; names and modes are looked up afresh each rate window."""
        for w in self._windows:
            if w.roll(now) and w is self._rate:
                self._names.clear()
        self._next_roll = min(w.start + w.length for w in self._windows)

    def baseline(self) -> dict[str, list[tuple[str, str, int]]]:
        """The learned UDP peers per workload: (direction, peer, service port)."""
        return {k: sorted(v) for k, v in self._baseline.items()}

    def load_baseline(self, baseline: dict[str, list[tuple[str, str, int]]]) -> None:
        """Learn peers kept from an earlier run (the same caps as learning them live)."""
        for key, peers in baseline.items():
            for peer in peers:
                self._learn(key, peer)

    # ---- alerts -------------------------------------------------------------------------

    def _alert(
        self,
        out: list[Observation],
        name: str,
        protocol: str,
        pkt: Packet,
        where: str,
        evidence: str,
        *,
        src: str | None = None,
        dst: str | None = None,
        sport: int | None = None,
        dport: int | None = None,
        dedup: str = "",
        **extra: object,
    ) -> None:
        """Report at once, or count into the open dedup window of (name, src, dst).

        `dedup` replaces the address pair as the dedup key when addresses are not what the
        alert is about (a new peer is one alert whatever the spoofed source).
        """
        src = pkt.src if src is None else src
        dst = pkt.dst if dst is None else dst
        key = (name, dedup, "") if dedup else (name, src, dst)
        last = self._dedup.repeat(key)
        if last is not None:  # the summary reports the newest count and evidence
            last.extra["count"] = str(extra.get("count", ""))
            last.threats[0].evidence = _short(evidence, 128)
            return
        fields = {k: str(v) for k, v in extra.items()}
        fields["where"] = where
        obs = Observation(
            seen_by="node-tap",
            source=self._identity(src, pkt.sport if sport is None else sport),
            destination=self._identity(dst, pkt.dport if dport is None else dport),
            time=pkt.ts,
            protocol=protocol,
            threats=[Threat(name, "network", _short(evidence, 128))],
            extra=fields,
        )
        self._dedup.report(key, obs, out)

    def _identity(self, ip: str, port: int) -> Identity:
        if ip == _MANY:
            return Identity(workload="many sources")
        return _copy(self._lookup(ip)[0], port=port)

    def _lookup(self, ip: str) -> tuple[Identity, str]:
        """Identity and mode of an address, cached for one rate window."""
        hit = self._names.get(ip)
        if hit is None:
            ident = self.resolve(ip)
            hit = (ident, self.mode_of(ident.namespace))
            if len(self._names) < self.config.max_keys:
                self._names[ip] = hit
        return hit

    # ---- floods -------------------------------------------------------------------------

    def _flood(
        self,
        pkt: Packet,
        where: str,
        out: list[Observation],
        name: str,
        protocol: str,
        threshold: int,
    ) -> None:
        rate = self._rate
        c = self.config
        window = c.rate_window
        if rate.add((name, pkt.src, pkt.dst)) == threshold:
            self._alert(
                out,
                name,
                protocol,
                pkt,
                where,
                f"{threshold}+ {protocol.upper()} packets in {window:g} s "
                f"from {pkt.src} to {pkt.dst} (threshold {threshold})",
                count=threshold,
                window_s=window,
            )
        total = rate.add((name, pkt.dst))
        sources = rate.add_member((name, pkt.dst), pkt.src, c.flood_sources)
        if (
            total >= threshold
            and sources >= c.flood_sources
            and rate.fire_once((name, "many", pkt.dst))
        ):
            self._alert(
                out,
                name,
                protocol,
                pkt,
                where,
                f"{total} {protocol.upper()} packets in {window:g} s to {pkt.dst} "
                f"from {sources}+ sources (threshold {threshold})",
                src=_MANY,
                sport=0,
                count=total,
                sources=sources,
                window_s=window,
            )

    # ---- fragments ----------------------------------------------------------------------

    def _fragment(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        c = self.config
        proto = pkt.proto
        off = pkt.frag_offset
        # a first fragment's payload starts after the transport header: count that back in
        end = off + len(pkt.payload) + (0 if off else _L4_HEADER.get(proto, 0))
        limit = _IPV4_MAX - 20 if pkt.ip_version == 4 else _IPV4_MAX
        protocol = "icmp" if proto in (ICMP, ICMPV6) else "udp"
        if end > limit:
            self._alert(
                out,
                names.PING_OF_DEATH,
                protocol,
                pkt,
                where,
                f"fragment id {pkt.ip_id} (proto {proto}) reaches byte {end} of the IP payload, "
                f"past the {limit}-byte limit",
                count=end,
                fragment_offset=off,
            )
        key = (pkt.src, pkt.dst, proto, pkt.ip_id)
        dgram = self._frags.get(key)
        if dgram is None:
            if len(self._frags) >= c.max_datagrams:
                self._frags.popitem(last=False)  # the oldest goes first
                self.stats["fragments_evicted"] += 1
            dgram = self._frags[key] = Datagram(pkt.ts)
        for o, e in dgram.extents:
            if off < e and end > o and (off, end) != (o, e):
                if not dgram.reported:
                    dgram.reported = True
                    self._alert(
                        out,
                        names.TEARDROP,
                        protocol,
                        pkt,
                        where,
                        f"fragment {off}-{end} overlaps {o}-{e} of datagram id {pkt.ip_id} "
                        f"(proto {proto})",
                        count=len(dgram.extents) + 1,
                    )
                break
        else:
            if (off, end) in dgram.extents:
                return  # an exact duplicate (retransmission, second capture point)
        if len(dgram.extents) < c.max_fragments:
            dgram.extents.append((off, end))
            dgram.covered += end - off
        if not pkt.more_fragments:
            dgram.total = end
        if dgram.total >= 0 and dgram.covered == dgram.total and not dgram.reported:
            del self._frags[key]  # complete without overlaps: nothing more to learn

    # ---- ICMP ---------------------------------------------------------------------------

    def _icmp(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        c = self.config
        proto, itype = pkt.proto, pkt.icmp_type
        if (proto, itype) in _ECHO_REQUEST:
            if not pkt.more_fragments:
                self._remember_echo(pkt)
            self._flood(pkt, where, out, names.ICMP_FLOOD, "icmp", c.icmp_flood_pps)
            self._random_echo(pkt, where, out)
        elif (proto, itype) in _ECHO_REPLY:
            if not pkt.more_fragments:
                sent = self._echo.pop((pkt.dst, pkt.src, pkt.icmp_id, pkt.icmp_seq), None)
                if sent is not None and sent[1] != zlib.crc32(pkt.payload):
                    self._alert(
                        out,
                        names.ICMP_TUNNELING,
                        "icmp",
                        pkt,
                        where,
                        f"echo reply id {pkt.icmp_id} seq {pkt.icmp_seq} carries "
                        f"{len(pkt.payload)} bytes unlike its request's",
                        count=1,
                    )
            self._random_echo(pkt, where, out)
        elif (proto, itype, pkt.icmp_code) in _PORT_UNREACHABLE:
            self._unreachable(pkt, where, out)
        elif itype not in _ICMP_ERRORS[proto]:
            self._flood(pkt, where, out, names.ICMP_FLOOD, "icmp", c.icmp_flood_pps)

    def _remember_echo(self, pkt: Packet) -> None:
        echo = self._echo
        if len(echo) >= self.config.max_pending_echo:
            echo.popitem(last=False)
        echo[(pkt.src, pkt.dst, pkt.icmp_id, pkt.icmp_seq)] = (pkt.ts, zlib.crc32(pkt.payload))

    def _random_echo(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        c = self.config
        n = len(pkt.payload)
        if n < c.icmp_tunnel_min_payload:
            return
        key = ("ICMP.Tunneling.random", pkt.src, pkt.dst)
        if key in self._rate.fired:
            return  # judged already in this window: spare the CPU under a flood
        bits = randomness(bytes(pkt.payload[:512]))
        if bits >= c.icmp_tunnel_entropy and self._rate.fire_once(key):
            self._alert(
                out,
                names.ICMP_TUNNELING,
                "icmp",
                pkt,
                where,
                f"echo payload of {n} bytes looks random ({bits:.1f} bits/byte)",
                count=1,
                payload_bytes=n,
                entropy=round(bits, 2),
            )

    def _unreachable(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        """ICMP port unreachable quoting our UDP probe: the quoted source is the scanner."""
        quoted = pkt.payload
        if pkt.proto == ICMP:
            if len(quoted) < 28 or quoted[0] >> 4 != 4 or quoted[9] != UDP:
                return
            ihl = (quoted[0] & 0x0F) * 4
            if len(quoted) < ihl + 4:
                return
        else:
            if len(quoted) < 48 or quoted[0] >> 4 != 6 or quoted[6] != UDP:
                return
            ihl = 40
        port = (quoted[ihl + 2] << 8) | quoted[ihl + 3]
        scanner, victim = pkt.dst, pkt.src
        c = self.config
        seen = self._scan.add_member(("unreach", scanner, victim), port, c.scan_unreachables)
        if seen >= c.scan_unreachables and self._scan.fire_once(("unreach", scanner, victim)):
            self._alert(
                out,
                names.UDP_PORT_SCAN,
                "udp",
                pkt,
                where,
                f"{victim} answered {seen} distinct UDP ports of {scanner} with port unreachable "
                f"in {c.scan_window:g} s",
                src=scanner,
                dst=victim,
                sport=0,
                dport=port,
                count=seen,
                window_s=c.scan_window,
            )

    # ---- UDP ----------------------------------------------------------------------------

    def _udp(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        c = self.config
        self._flood(pkt, where, out, names.UDP_FLOOD, "udp", c.udp_flood_pps)
        if pkt.more_fragments and len(pkt.payload) < 8:
            return
        request = self._is_request(pkt)
        if request:
            ports = self._scan.add_member((pkt.src, pkt.dst), pkt.dport, c.scan_ports)
            if ports >= c.scan_ports and self._scan.fire_once((pkt.src, pkt.dst)):
                self._alert(
                    out,
                    names.UDP_PORT_SCAN,
                    "udp",
                    pkt,
                    where,
                    f"{pkt.src} probed {ports}+ UDP ports of {pkt.dst} in {c.scan_window:g} s",
                    count=ports,
                    window_s=c.scan_window,
                )
            if self._pods:
                self._peers(pkt, where, out)
        dns_ports = self._dns_ports
        if pkt.dport in dns_ports or pkt.sport in dns_ports:
            self._dns_udp(pkt, where, out)

    def _is_request(self, pkt: Packet) -> bool:
        """True unless the packet answers a UDP flow seen in the other direction recently."""
        ts = pkt.ts
        if ts - self._flows_start >= self.config.scan_window or ts < self._flows_start:
            self._flows_prev, self._flows = self._flows, {}
            self._flows_start = ts
        back = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        if back in self._flows or back in self._flows_prev:
            return False
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if key in self._flows or key in self._flows_prev:
            return False  # the same request flow again: judged on its first packet
        if len(self._flows) < self.config.max_keys:
            self._flows[key] = None
            return True
        self.stats["untracked"] += 1
        # table full: guess by ports that a well-known port answering a high one is a reply
        return not pkt.sport < 1024 <= pkt.dport

    def _peers(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        """Baseline both ends of a new UDP flow: (direction, peer, service port) per workload.

        Only pods (addresses `resolve` gives a namespace) have a baseline. Inbound peers that
        are not pods count as one peer, "external": source addresses can be spoofed, and a
        spoofed flood must not fill a baseline with junk or raise one alert per fake source.
        """
        client, client_mode = self._lookup(pkt.src)
        server, server_mode = self._lookup(pkt.dst)
        port = pkt.dport
        for me, mode, peer in (
            (client, client_mode, ("out", server.key, port)),
            (server, server_mode, ("in", client.key if client.namespace else "external", port)),
        ):
            if not me.namespace:
                continue
            if mode == "learn":
                self._learn(me.key, peer)
            elif mode in ("monitor", "enforce") and peer not in self._baseline.get(me.key, ()):
                direction, other, _ = peer
                verb = "sends to" if direction == "out" else "receives from"
                self._alert(
                    out,
                    names.UDP_NEW_PEER,
                    "udp",
                    pkt,
                    where,
                    f"{me.key} {verb} {other} on UDP port {port}, not in its learned peers",
                    count=1,
                    workload=me.key,
                    direction=direction,
                    mode=mode,
                    dedup=f"{me.key} {direction} {other} {port}",
                )

    def _learn(self, key: str, peer: tuple[str, str, int]) -> None:
        c = self.config
        peers = self._baseline.get(key)
        if peers is None:
            if len(self._baseline) >= c.max_workloads:
                self.stats["untracked"] += 1
                return
            peers = self._baseline[key] = set()
        if peer in peers:
            return
        if len(peers) < c.max_peers:
            peers.add(peer)
            self.baseline_changes += 1
        else:
            self.stats["untracked"] += 1

    # ---- DNS ----------------------------------------------------------------------------

    def _dns_udp(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        msg = dns.parse(pkt.payload)
        if msg is None:
            self.stats["dns_unparsed"] += 1
            return
        c = self.config
        if msg.is_response:
            if pkt.sport not in self._dns_ports:
                return
            server, client = pkt.src, pkt.dst
            amp = self._amp
            got = amp.add(("resp", server, client), msg.size)
            sent = amp.counts.get(("req", server, client), 0)
            if (
                got >= c.dns_amp_min_bytes
                and got >= c.dns_amp_ratio * max(sent, 1)
                and amp.fire_once(("amp", server, client))
            ):
                self._alert(
                    out,
                    names.DNS_AMPLIFICATION,
                    "dns",
                    pkt,
                    where,
                    f"{got} response bytes from {server} to {client} for {sent} request bytes "
                    f"in {c.dns_amp_window:g} s",
                    count=got,
                    request_bytes=sent,
                    window_s=c.dns_amp_window,
                )
            return
        if pkt.dport not in self._dns_ports:
            return
        self._amp.add(("req", pkt.dst, pkt.src), msg.size)
        self._dns_query(msg, pkt, where, out, "udp")

    def _dns_tcp(self, pkt: Packet, where: str, out: list[Observation]) -> None:
        """A query in a client's TCP segment: after the 2-byte length, or alone when the client
        wrote the length in a segment of its own (then only a plain one-question query counts).
        """
        raw = dns.tcp_message(pkt.payload)
        msg = dns.parse(raw) if raw is not None else None
        if msg is None:
            msg = dns.parse(pkt.payload)
            if msg is None or msg.qdcount != 1 or msg.opcode != 0:
                return
        if not msg.is_response:
            self._dns_query(msg, pkt, where, out, "tcp")

    def _zone_transfer(
        self, msg: dns.DnsMessage, pkt: Packet, where: str, out: list[Observation], over: str
    ) -> None:
        kind = "AXFR" if msg.qtype == dns.QTYPE_AXFR else "IXFR"
        self._alert(
            out,
            names.DNS_ZONE_TRANSFER,
            "dns",
            pkt,
            where,
            f"{kind} request for {_short(msg.qname or '.')} over {over}",
            count=1,
            qname=msg.qname,
            qtype=kind,
        )

    def _dns_query(
        self, msg: dns.DnsMessage, pkt: Packet, where: str, out: list[Observation], over: str
    ) -> None:
        c = self.config
        qtype = msg.qtype
        client, server = pkt.src, pkt.dst
        if qtype in (dns.QTYPE_AXFR, dns.QTYPE_IXFR):
            self._zone_transfer(msg, pkt, where, out, over)
        elif qtype == dns.QTYPE_ANY:
            self._alert(
                out,
                names.DNS_AMPLIFICATION,
                "dns",
                pkt,
                where,
                f"ANY query for {_short(msg.qname or '.')} over {over}",
                count=1,
                qname=msg.qname,
                qtype="ANY",
            )
        elif qtype in (dns.QTYPE_TXT, dns.QTYPE_NULL):
            n = self._txt.add(("txt", client, server))
            if n == c.dns_txt_queries:
                self._alert(
                    out,
                    names.DNS_TUNNELING,
                    "dns",
                    pkt,
                    where,
                    f"{n} TXT/NULL queries from {client} to {server} in {c.dns_txt_window:g} s",
                    count=n,
                    window_s=c.dns_txt_window,
                )
        labels = msg.labels
        if len(labels) < 3:
            return
        base = labels[-2] + "." + labels[-1]
        sub = labels[:-2]
        odd = self._odd_label(sub, labels)
        window = self._dns
        if odd:
            n = window.add_member(("odd", client, base), hash(odd), c.dns_suspicious_queries)
            if n >= c.dns_suspicious_queries and window.fire_once(("odd", client, base)):
                self._alert(
                    out,
                    names.DNS_TUNNELING,
                    "dns",
                    pkt,
                    where,
                    f"{n} queries with long or random labels under {base}, e.g. {odd}",
                    count=n,
                    domain=base,
                    window_s=c.dns_window,
                )
        if base not in self._exempt:
            n = window.add_member(("sub", client, base), hash(sub), c.dns_unique_subdomains)
            if n >= c.dns_unique_subdomains and window.fire_once(("sub", client, base)):
                self._alert(
                    out,
                    names.DNS_TUNNELING,
                    "dns",
                    pkt,
                    where,
                    f"{n} unique subdomains of {base} queried by {client} in {c.dns_window:g} s",
                    count=n,
                    domain=base,
                    window_s=c.dns_window,
                )

    def _odd_label(self, sub: tuple[str, ...], labels: tuple[str, ...]) -> str:
        """The first label that is too long or too random (or the name, if too long), else ''."""
        c = self.config
        for label in sub:
            n = len(label)
            if n >= c.dns_long_label:
                return label
            if n >= c.dns_entropy_min_label and entropy(label) >= c.dns_label_entropy:
                return label
        if sum(map(len, labels)) + len(labels) - 1 >= c.dns_long_name:
            return ".".join(labels)
        return ""
