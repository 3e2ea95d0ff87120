"""Each network detector on crafted packets: fires on the attack, stays quiet on the benign twin."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.observation import Identity, Observation
from meshward.tap.node import dns
from meshward.tap.node.netthreats import NetThreatConfig, NetworkMonitor, randomness
from meshward.tap.node.packet import ICMP, TCP, UDP, decode
from tests.support import frames as f
from tests.support.netmonitor import load_baseline

A, B, C = "10.9.0.2", "10.9.0.3", "10.9.0.4"


def feed(mon: NetworkMonitor, ip: bytes, ts: float, where: str = "eth0") -> list[Observation]:
    pkt = decode(f.ether(ip), ts)
    assert pkt is not None
    return mon.feed(pkt, where)


def names(alerts: list[Observation]) -> list[str]:
    return [o.threats[0].name for o in alerts]


def ping(mon: NetworkMonitor, ts: float, seq: int, data: bytes = b"x" * 56) -> list[Observation]:
    out = feed(mon, f.ipv4(A, B, ICMP, f.icmp(8, 0, 7, seq, data)), ts)
    return out + feed(mon, f.ipv4(B, A, ICMP, f.icmp(0, 0, 7, seq, data)), ts + 0.0005)


def test_icmp_flood_once_per_window_then_summary() -> None:
    mon = NetworkMonitor()
    alerts = []
    for i in range(1000):
        alerts += ping(mon, 100.0 + i * 0.004, i)  # 250 requests/s for 4 s
    assert names(alerts) == ["ICMP.Flood"]
    obs = alerts[0]
    assert (obs.seen_by, obs.protocol, obs.source.ip, obs.destination.ip) == (
        "node-tap",
        "icmp",
        A,
        B,
    )
    assert obs.threats[0].location == "network" and "200+ ICMP packets" in obs.threats[0].evidence
    assert obs.extra["count"] == "200" and obs.extra["where"] == "eth0"
    assert obs.time - 100.0 < 1.0  # raised by the packet that crossed the threshold
    summary = mon.tick(100.0 + 11)
    assert names(summary) == ["ICMP.Flood"] and summary[0].extra["summary"] == "true"
    assert int(summary[0].extra["repeats"]) == 3  # the 3 later windows, counted not repeated
    assert mon.tick(100.0 + 22) == []  # quiet window: the dedup entry closes silently


def test_flood_summaries_repeat_per_window_through_the_shared_dedup() -> None:
    """NetworkMonitor deduplicates through tap.node.dedup.AlertDedup: a flood that goes on
    gives one summary per window, each a copy later repeats do not change."""
    mon = NetworkMonitor()
    for i in range(1000):
        ping(mon, 100.0 + i * 0.004, i)
    summary = mon.tick(100.0 + 11)
    assert summary[0].extra["repeats"] == "3" and summary[0].extra["dedup_window_s"] == "10"
    sent = (dict(summary[0].extra), summary[0].threats[0].evidence)
    for i in range(1000):
        ping(mon, 112.0 + i * 0.004, i)
    assert (summary[0].extra, summary[0].threats[0].evidence) == sent
    again = mon.tick(112.0 + 11)
    assert names(again) == ["ICMP.Flood"] and again[0].extra["repeats"] == "4"
    assert again[0].threats[0] is not summary[0].threats[0]
    assert mon.stats["alerts"] == 3 and mon.stats["suppressed"] == 7


def test_benign_pings_raise_nothing() -> None:
    mon = NetworkMonitor()
    alerts = []
    for i in range(3):
        alerts += ping(mon, 50.0 + i, i)
    big = bytes(range(256)) * 4  # ping -s 1024 fill pattern: flat histogram, not random
    alerts += ping(mon, 54.0, 9, big)
    assert alerts == [] and mon.tick(70.0) == []


def test_spoofed_distributed_flood_is_one_alert_and_bounded() -> None:
    cfg = NetThreatConfig(max_keys=500, max_set_keys=200, max_pending_echo=100)
    mon = NetworkMonitor(cfg)
    rnd = random.Random(1)
    alerts = []
    for i in range(20000):
        src = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        ip = f.ipv4(src, B, UDP, f.udp(rnd.randrange(1024, 65535), 9999, b"z" * 16))
        alerts += feed(mon, ip, 10.0 + i * 0.00002)
    assert names(alerts) == ["UDP.Flood"]
    assert alerts[0].source.workload == "many sources" and alerts[0].destination.ip == B
    assert len(mon._rate.counts) <= 500 and len(mon._flows) <= 500
    assert len(mon._scan.sets) <= 200 and len(mon._names) <= 500
    assert mon.stats["untracked"] > 0


def test_udp_flood_per_source() -> None:
    mon = NetworkMonitor(NetThreatConfig(udp_flood_pps=300))
    alerts = []
    for i in range(400):
        alerts += feed(mon, f.ipv4(A, B, UDP, f.udp(40000, 9000, b"a" * 64)), 5.0 + i / 1000)
    assert names(alerts) == ["UDP.Flood"] and alerts[0].protocol == "udp"


def test_ping_of_death_fragment_past_limit() -> None:
    mon = NetworkMonitor()
    ip = f.ipv4(A, B, ICMP, b"\x00" * 200, ident=9, frag_offset=65528, mf=False)
    alerts = feed(mon, ip, 1.0)
    assert names(alerts) == ["Ping.Death"] and "65728" in alerts[0].threats[0].evidence


def test_largest_legal_ping_is_not_ping_of_death() -> None:
    mon = NetworkMonitor()
    datagram = f.icmp(8, 0, 1, 1, b"p" * 65507)  # ping -s 65507: a 65535-byte IP packet
    alerts = []
    for frag in f.fragment_v4(A, B, ICMP, datagram, 1480, ident=5):
        alerts += feed(mon, frag, 1.0)
    assert alerts == [] and mon._frags == {}  # complete, so forgotten at once


def test_teardrop_overlap() -> None:
    mon = NetworkMonitor()
    first = f.ipv4(A, B, UDP, f.udp(1, 2, b"q" * 40)[:24], ident=77, mf=True)
    overlap = f.ipv4(A, B, UDP, b"r" * 40, ident=77, frag_offset=16)
    assert feed(mon, first, 1.0) == []
    assert feed(mon, first, 1.0) == []  # exact duplicate: not an overlap
    alerts = feed(mon, overlap, 1.01)
    assert (
        names(alerts) == ["IP.Fragment.Teardrop"]
        and "16-56 overlaps 0-24" in alerts[0].threats[0].evidence
    )


def test_fragment_buffers_are_capped_and_expire() -> None:
    mon = NetworkMonitor(NetThreatConfig(max_datagrams=50, frag_timeout=5))
    for i in range(500):
        feed(
            mon, f.ipv4(f"10.1.{i // 250}.{i % 250 + 1}", B, UDP, b"x" * 16, ident=i, mf=True), 1.0
        )
    assert len(mon._frags) == 50 and mon.stats["fragments_evicted"] == 450
    mon.tick(10.0)
    assert mon._frags == {}


def test_icmp_tunnel_reply_mismatch() -> None:
    mon = NetworkMonitor()
    feed(mon, f.ipv4(A, B, ICMP, f.icmp(8, 0, 3, 1, b"hello" * 8)), 1.0)
    alerts = feed(mon, f.ipv4(B, A, ICMP, f.icmp(0, 0, 3, 1, b"exfil" * 8)), 1.01)
    assert names(alerts) == ["ICMP.Tunneling"] and alerts[0].source.ip == B


def test_icmp_tunnel_random_payload() -> None:
    mon = NetworkMonitor()
    alerts = feed(mon, f.ipv4(A, B, ICMP, f.icmp(8, 0, 3, 1, os.urandom(512))), 1.0)
    assert names(alerts) == ["ICMP.Tunneling"] and "looks random" in alerts[0].threats[0].evidence
    assert randomness(bytes(range(256)) * 2) < 3 < 7 < randomness(os.urandom(4096))


def test_udp_port_scan_by_probes() -> None:
    mon = NetworkMonitor()
    alerts = []
    for port in range(1, 31):
        alerts += feed(mon, f.ipv4(A, B, UDP, f.udp(45000, port, b"")), 1.0 + port / 100)
    assert names(alerts) == ["UDP.Port.Scan"] and alerts[0].source.ip == A


def test_udp_port_scan_by_unreachables() -> None:
    mon = NetworkMonitor(NetThreatConfig(scan_ports=1000))  # only the ICMP replies count here
    alerts = []
    for port in range(100, 112):
        probe = f.ipv4(A, B, UDP, f.udp(45000, port, b""))
        alerts += feed(mon, probe, 1.0)
        alerts += feed(mon, f.ipv4(B, A, ICMP, f.icmp_unreachable(probe)), 1.001)
    assert names(alerts) == ["UDP.Port.Scan"]
    assert (alerts[0].source.ip, alerts[0].destination.ip) == (A, B)
    assert "port unreachable" in alerts[0].threats[0].evidence


def test_dns_server_replies_to_many_client_ports_are_no_scan() -> None:
    mon = NetworkMonitor()
    alerts = []
    for i in range(60):
        q = f.dns_query(f"svc{i % 5}.shop.svc.cluster.local", ident=i)
        alerts += feed(mon, f.ipv4(A, B, UDP, f.udp(30000 + i, 53, q)), 1.0 + i / 100)
        r = f.dns_response(q, b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x00\x00\x09")
        alerts += feed(mon, f.ipv4(B, A, UDP, f.udp(53, 30000 + i, r)), 1.001 + i / 100)
    assert alerts == []


def test_dns_replies_are_no_scan_even_with_a_full_flow_table() -> None:
    mon = NetworkMonitor(NetThreatConfig(max_keys=10))
    alerts = []
    for i in range(60):
        q = f.dns_query("web.shop.svc.cluster.local", ident=i)
        alerts += feed(mon, f.ipv4(A, B, UDP, f.udp(30000 + i, 53, q)), 1.0 + i / 100)
        alerts += feed(
            mon, f.ipv4(B, A, UDP, f.udp(53, 30000 + i, f.dns_response(q))), 1.0 + i / 100
        )
    assert alerts == [] and mon.stats["untracked"] > 0


def query(
    mon: NetworkMonitor, name: str, ts: float, qtype: int = 1, sport: int = 33333
) -> list[Observation]:
    return feed(mon, f.ipv4(A, B, UDP, f.udp(sport, 53, f.dns_query(name, qtype))), ts)


def test_dns_tunneling_long_random_labels() -> None:
    mon = NetworkMonitor()
    rnd = random.Random(2)
    alerts = []
    for i in range(4):
        label = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(50))
        alerts += query(mon, f"{label}.t.exfil.test", 1.0 + i, sport=40000 + i)
    assert names(alerts) == ["DNS.Tunneling"] and alerts[0].protocol == "dns"
    assert "exfil.test" in alerts[0].threats[0].evidence and alerts[0].extra["count"] == "3"


def test_ordinary_lookups_raise_nothing() -> None:
    mon = NetworkMonitor()
    alerts = []
    names_ = [
        "www.example.com",
        "api.github.com",
        "kubernetes.default.svc.cluster.local",
        "payments-db.payments.svc.cluster.local",
        "a1b2c3d4e5f6.cloudfront.net",
        "login.microsoftonline.com",
        "ec2-10-1-2-3.compute-1.amazonaws.com",
    ]
    for i, name in enumerate(names_ * 5):
        for qtype in (1, 28):
            alerts += query(mon, name, 1.0 + i / 10, qtype, sport=20000 + i * 2 + qtype)
    # one AWS load balancer name looked up through the whole ndots:5 search path
    elb = "internal-a1b9f0e2d3c4b5a6f7e8d9c0b1a2f3e4-1234567890.eu-west-1.elb.amazonaws.com"
    for j, suffix in enumerate(
        ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", ""]
    ):
        alerts += query(mon, f"{elb}.{suffix}".rstrip("."), 9.0 + j / 10, sport=50000 + j)
    assert alerts == []


def test_dns_tunneling_unique_subdomains_and_txt_burst() -> None:
    mon = NetworkMonitor()
    alerts = []
    for i in range(120):
        alerts += query(mon, f"h{i}.data.exfil.test", 1.0 + i / 100, sport=1000 + i)
    assert (
        names(alerts) == ["DNS.Tunneling"]
        and "100 unique subdomains" in alerts[0].threats[0].evidence
    )
    mon = NetworkMonitor()
    alerts = []
    for i in range(25):
        alerts += query(mon, "x.txt.test", 1.0 + i / 10, dns.QTYPE_TXT, sport=2000 + i)
    assert names(alerts) == ["DNS.Tunneling"] and "TXT/NULL" in alerts[0].threats[0].evidence


def test_dns_any_and_amplification_ratio() -> None:
    mon = NetworkMonitor()
    alerts = query(mon, "victim.test", 1.0, dns.QTYPE_ANY)
    assert names(alerts) == ["DNS.Amplification"] and "ANY" in alerts[0].threats[0].evidence
    mon = NetworkMonitor()
    q = f.dns_query("big.test", 1)
    alerts = []
    for i in range(30):  # responses to a victim that never asked (spoofed-source reflection)
        big = f.dns_response(q, b"\x00" * 1400)
        alerts += feed(mon, f.ipv4(C, A, UDP, f.udp(53, 7777, big)), 1.0 + i / 100)
    assert names(alerts) == ["DNS.Amplification"] and alerts[0].source.ip == C


def test_zone_transfer_udp_and_tcp() -> None:
    mon = NetworkMonitor()
    alerts = query(mon, "corp.test", 1.0, dns.QTYPE_AXFR)
    q = f.dns_query("corp.test", dns.QTYPE_IXFR)
    seg = f.tcp(40001, 53, 1, 1, 0x18, struct.pack("!H", len(q)) + q)
    alerts += feed(mon, f.ipv4(C, B, TCP, seg), 2.0)
    assert names(alerts) == ["DNS.Zone.Transfer"] * 2
    assert "AXFR" in alerts[0].threats[0].evidence and "IXFR" in alerts[1].threats[0].evidence
    assert "over tcp" in alerts[1].threats[0].evidence
    # a client that writes the 2-byte length and the message in separate segments
    mon = NetworkMonitor()
    q = f.dns_query("other.test", dns.QTYPE_AXFR)
    assert (
        feed(mon, f.ipv4(C, B, TCP, f.tcp(40002, 53, 1, 1, 0x18, struct.pack("!H", len(q)))), 3.0)
        == []
    )
    alerts = feed(mon, f.ipv4(C, B, TCP, f.tcp(40002, 53, 3, 1, 0x18, q)), 3.0)
    assert names(alerts) == ["DNS.Zone.Transfer"] and "other.test" in alerts[0].threats[0].evidence


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
def test_udp_new_peer_after_learning(mode: str) -> None:
    pods = {A: Identity("shop", "web", ip=A), B: Identity("shop", "dns", ip=B)}
    modes = {"shop": "learn"}
    mon = NetworkMonitor(
        resolve=lambda ip: pods.get(ip, Identity(ip=ip)), mode_of=lambda ns: modes.get(ns, "learn")
    )
    assert query(mon, "www.example.com", 1.0) == []
    assert mon.baseline()["shop/web"] == [("out", "shop/dns", 53)]
    assert mon.baseline()["shop/dns"] == [("in", "shop/web", 53)]
    modes["shop"] = mode
    assert query(mon, "www.example.com", 3.0, sport=40000) == []  # known peer: nothing
    alerts = feed(mon, f.ipv4(A, C, UDP, f.udp(41000, 123, b"\x1b" + b"\x00" * 47)), 4.0)
    assert names(alerts) == ["UDP.New.Peer"]
    assert alerts[0].source.key == "shop/web" and alerts[0].destination.ip == C
    assert (
        alerts[0].extra["mode"] == mode
        and "10.9.0.4 on UDP port 123" in alerts[0].threats[0].evidence
    )


def test_baseline_round_trip_and_caps() -> None:
    def resolve(ip: str) -> Identity:
        return (
            Identity("shop", f"w{ip.rsplit('.', 1)[1]}", ip=ip)
            if ip.startswith("10.8.")
            else Identity(ip=ip)
        )

    mon = NetworkMonitor(NetThreatConfig(max_peers=3, max_workloads=2), resolve=resolve)
    for i in range(10):
        feed(mon, f.ipv4(A, f"10.8.0.{i + 1}", UDP, f.udp(1000 + i, 5000, b"")), 1.0)
    base = mon.baseline()
    assert base == {"shop/w1": [("in", "external", 5000)], "shop/w2": [("in", "external", 5000)]}
    assert A not in base  # not a pod: no baseline
    other = NetworkMonitor()
    load_baseline(other, base)
    assert other.baseline() == base


def test_spoofed_sources_are_one_external_peer() -> None:
    pods = {B: Identity("shop", "dns", ip=B)}
    mon = NetworkMonitor(
        resolve=lambda ip: pods.get(ip, Identity(ip=ip)), mode_of=lambda ns: "monitor"
    )
    alerts = []
    for i in range(300):
        src = f"10.{i % 200}.{i // 200}.9"
        alerts += feed(
            mon, f.ipv4(src, B, UDP, f.udp(2000 + i, 53, f.dns_query("a.b.test"))), 1.0 + i / 1000
        )
    assert names(alerts) == ["UDP.New.Peer"]  # one alert: "external" is new, then deduplicated
    assert "receives from external on UDP port 53" in alerts[0].threats[0].evidence
    assert mon.baseline() == {}  # monitor mode learns nothing


_frames = st.one_of(
    st.binary(max_size=120).map(lambda d: f.ipv4(A, B, UDP, f.udp(1, 53, d))),
    st.binary(max_size=120).map(lambda d: f.ipv4(B, A, UDP, f.udp(53, 1, d))),
    st.binary(max_size=120).map(lambda d: f.ipv4(A, B, TCP, f.tcp(1, 53, 0, 0, 0x18, d))),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=120)).map(
        lambda t: f.ipv4(A, B, ICMP, bytes([t[0], t[1], 0, 0]) + t[2])
    ),
    st.tuples(st.integers(0, 8191), st.booleans(), st.binary(max_size=64)).map(
        lambda t: f.ipv4(A, B, ICMP, t[2], ident=3, frag_offset=t[0] * 8, mf=t[1])
    ),
    st.binary(min_size=20, max_size=120),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_frames, st.floats(0, 100)), max_size=30))
def test_random_packets_never_raise(packets: list[tuple[bytes, float]]) -> None:
    mon = NetworkMonitor(mode_of=lambda ns: "monitor")
    for ip, ts in packets:
        pkt = decode(ip, ts, "raw")
        if pkt is not None:
            for obs in mon.feed(pkt):
                assert obs.threats and obs.seen_by == "node-tap"
    mon.tick(200.0)


def test_alerts_survive_the_wire_and_the_engine() -> None:
    from meshward.core.engine import Engine, EngineConfig
    from meshward.core.observation import observation_from_dict, observation_to_dict

    mon = NetworkMonitor()
    alerts = query(mon, "corp.test", 1.0, dns.QTYPE_AXFR)
    obs = observation_from_dict(observation_to_dict(alerts[0]))
    assert obs.threats == alerts[0].threats and obs.extra == alerts[0].extra
    engine = Engine(config=EngineConfig(threats=False))  # only the tap's own threats
    for mode in ("learn", "monitor", "enforce"):
        v = engine.evaluate(obs, mode=mode)
        assert v.verdict in ("alert", "deny") and [t.name for t in v.threats] == [
            "DNS.Zone.Transfer"
        ]
    assert engine.alerts(limit=10)[0]["seen_by"] == "node-tap"


def test_config_from_dict() -> None:
    cfg = NetThreatConfig.from_dict(
        {"icmp_flood_pps": 50, "dns_ports": [53, 5353], "rate_window": 2}
    )
    assert (cfg.icmp_flood_pps, cfg.dns_ports, cfg.rate_window) == (50, (53, 5353), 2.0)
    for bad in (
        {"nope": 1},
        {"icmp_flood_pps": "many"},
        {"icmp_flood_pps": 0},
        {"scan_ports": 2.5},
        {"dns_ports": 53},
        [1],
    ):
        with pytest.raises(ValueError):
            NetThreatConfig.from_dict(bad)


def test_ipv6_scan_unreachables_and_oversized_fragment() -> None:
    mon = NetworkMonitor(NetThreatConfig(scan_ports=1000))
    a6, b6 = "fd00::2", "fd00::3"
    alerts = []
    for port in range(200, 212):
        probe = f.ipv6(a6, b6, UDP, f.udp(45000, port, b""))
        alerts += feed(mon, probe, 1.0)
        quote = struct.pack("!BBHI", 1, 4, 0, 0) + probe  # ICMPv6 port unreachable
        alerts += feed(mon, f.ipv6(b6, a6, 58, quote), 1.001)
    assert names(alerts) == ["UDP.Port.Scan"] and alerts[0].source.ip == a6
    big = f.ipv6(a6, b6, 58, b"\x00" * 600, frag=(65528, False, 99))
    alerts = feed(mon, big, 2.0)
    assert names(alerts) == ["Ping.Death"] and alerts[0].protocol == "icmp"
