"""Real attack tools in real network namespaces, seen by the node tap's capture: each threat is
alerted within 5 s, and benign ping and DNS traffic raise nothing.

The victim pod runs dnsmasq; the attacker pod runs hping3, nmap, dig and ping against it. The
node tap (tap.node.pipeline.NodeTap, AF_PACKET on the victim's eth0) feeds a NetworkMonitor;
each test swaps in a fresh monitor so one test's state cannot help another.
"""

from __future__ import annotations

import os
import random
import string
import time
from collections.abc import Iterator

import pytest

from meshward.core.observation import Observation
from tests.conftest import need_tools
from tests.support.netlab import DEADLINE, Lab, lab_on
from tests.support.netns import need_netns

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_netns()
    need_tools("hping3", "nmap", "dig", "dnsmasq", "ping", "timeout")
    with lab_on(f"10.214.{random.randrange(256)}", watch="pod") as lab:
        yield lab


def _latency(lab: Lab, obs: Observation, start: float) -> float:
    """Seconds from starting the tool to the node tap handing out the alert."""
    took = lab.arrived[id(obs)] - start
    print(f"{obs.threats[0].name}: alerted {took:.2f} s after the tool started")
    assert took <= DEADLINE, f"{obs.threats[0].name} took {took:.2f} s"
    return took


def _print_rates(lab: Lab, start: float) -> None:
    """What the monitor kept up with during a flood (shown with pytest -s)."""
    fed = lab.monitor.inner.stats["packets"]
    m = lab.tap.stats()
    print(
        f"  monitor fed {fed} packets ({fed / (time.time() - start):.0f}/s); "
        f"kernel counted {m.get('kernel_packets')} dropped {m.get('kernel_drops')} (cumulative)"
    )


def test_benign_ping_and_dns_raise_nothing(lab: Lab) -> None:
    lab.fresh()
    v = lab.victim.ip
    lab.attack(["ping", "-c", "3", v])
    # the largest legal ping: a 65535-byte datagram in 45 fragments, at the limit, not past it
    lab.attack(["ping", "-c", "2", "-i", "0.3", "-s", "65507", v])
    lab.attack(
        [
            "dig",
            f"@{v}",
            "+tries=1",
            "+time=2",
            "www.corp.test",
            "api.corp.test",
            "corp.test",
            "MX",
            "mail.corp.test",
            "AAAA",
            "www.corp.test",
            "TXT",
        ]
    )
    time.sleep(1.5)  # past a rate window and a tick
    stats = lab.monitor.inner.stats
    assert stats["packets"] >= 6 + 4 * 45 + 8, stats
    assert lab.alerts == []
    assert lab.monitor.inner._frags == {}  # every fragmented ping completed and was forgotten


def test_hping3_icmp_flood(lab: Lab) -> None:
    start = lab.fresh()
    # `-i u1` floods as fast as hping3 can (~20k/s here) yet honours -c, which --flood ignores
    lab.attack(["hping3", "-1", "-i", "u1", "-q", "-c", "20000", lab.victim.ip], timeout=2)
    obs = lab.wait_for("ICMP.Flood", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)
    assert obs.destination.key == "lab/victim" and obs.seen_by == "node-tap"
    _latency(lab, obs, start)
    _print_rates(lab, start)


def test_hping3_fragments_past_the_ip_limit(lab: Lab) -> None:
    start = lab.fresh()
    # an ICMP fragment at offset 65000 carrying 1408 bytes: its datagram would end at 66408
    lab.attack(["hping3", "-1", "-c", "2", "-d", "1400", "-g", "65000", lab.victim.ip], timeout=4)
    obs = lab.wait_for("Ping.Death", start)
    assert obs.source.ip == lab.attacker.ip and "65000" not in obs.threats[0].evidence[:0]
    _latency(lab, obs, start)


def test_hping3_udp_flood(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(
        ["hping3", "-2", "-i", "u1", "-q", "-c", "20000", "-p", "9999", lab.victim.ip], timeout=2
    )
    obs = lab.wait_for("UDP.Flood", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)
    _latency(lab, obs, start)
    _print_rates(lab, start)


def test_nmap_udp_port_sweep(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(
        [
            "nmap",
            "-sU",
            "-n",
            "-Pn",
            "-T5",
            "--max-retries",
            "0",
            "-p",
            "1-100",
            "--host-timeout",
            "10s",
            lab.victim.ip,
        ],
        timeout=15,
    )
    obs = lab.wait_for("UDP.Port.Scan", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)
    _latency(lab, obs, start)


def test_dig_long_random_labels(lab: Lab) -> None:
    start = lab.fresh()
    rnd = random.Random()
    names = []
    for _ in range(5):
        label = "".join(rnd.choice(string.ascii_lowercase + "234567") for _ in range(52))
        names.append(f"{label}.x.corp.test")
    lab.attack(["dig", f"@{lab.victim.ip}", "+tries=1", "+time=1", *names])
    obs = lab.wait_for("DNS.Tunneling", start)
    assert obs.protocol == "dns" and "corp.test" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_dig_axfr(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(["dig", f"@{lab.victim.ip}", "+tries=1", "+time=2", "corp.test", "AXFR"])
    obs = lab.wait_for("DNS.Zone.Transfer", start)
    assert obs.source.ip == lab.attacker.ip and "AXFR" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_hping3_spoofed_icmp_flood(lab: Lab) -> None:
    start = lab.fresh()
    # random source addresses; the replies die in the node namespace (no route out of it)
    lab.attack(
        ["hping3", "-1", "-i", "u1", "-q", "--rand-source", "-c", "20000", lab.victim.ip], timeout=2
    )
    obs = lab.wait_for("ICMP.Flood", start)
    assert obs.source.workload == "many sources" and obs.destination.ip == lab.victim.ip
    _latency(lab, obs, start)
    _print_rates(lab, start)
    inner = lab.monitor.inner
    assert len(inner._rate.counts) <= inner.config.max_keys
    assert len(inner._echo) <= inner.config.max_pending_echo


def test_hping3_overlapping_fragments(lab: Lab) -> None:
    start = lab.fresh()
    v = lab.victim.ip
    # two fragments of IP id 4242: bytes 0-108 (more fragments) and 64-172 overlap
    lab.attack(["hping3", "-1", "-c", "1", "-N", "4242", "-x", "-d", "100", v], timeout=3)
    lab.attack(["hping3", "-1", "-c", "1", "-N", "4242", "-g", "64", "-d", "100", v], timeout=3)
    obs = lab.wait_for("IP.Fragment.Teardrop", start)
    assert obs.source.ip == lab.attacker.ip and "overlaps" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_hping3_random_echo_payload(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("icmp") / "payload.bin"
    data.write_bytes(os.urandom(600))
    start = lab.fresh()
    lab.attack(["hping3", "-1", "-c", "2", "-d", "600", "-E", str(data), lab.victim.ip], timeout=4)
    obs = lab.wait_for("ICMP.Tunneling", start)
    assert "looks random" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_dig_any_query(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(["dig", f"@{lab.victim.ip}", "+tries=1", "+time=2", "corp.test", "ANY"])
    obs = lab.wait_for("DNS.Amplification", start)
    assert "ANY query" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_new_udp_peer_in_monitor_mode(lab: Lab) -> None:
    modes = {"lab": "learn"}
    lab.fresh(mode_of=lambda ns: modes.get(ns, "learn"))
    v = lab.victim.ip
    lab.attack(["dig", f"@{v}", "+tries=1", "+time=2", "www.corp.test"])
    time.sleep(0.5)
    baseline = lab.monitor.inner.baseline()
    assert ("in", "external", 53) in baseline["lab/victim"], baseline  # attacker: no pod
    modes["lab"] = "monitor"
    time.sleep(1.1)  # the monitor caches modes for one rate window
    lab.attack(["dig", f"@{v}", "+tries=1", "+time=2", "api.corp.test"])
    time.sleep(0.5)
    assert lab.alerts == []  # a learned peer
    start = time.time()
    lab.attack(["hping3", "-2", "-c", "1", "-p", "5353", v], timeout=3)
    obs = lab.wait_for("UDP.New.Peer", start)
    assert obs.extra["workload"] == "lab/victim" and obs.extra["mode"] == "monitor"
    assert "on UDP port 5353" in obs.threats[0].evidence
    _latency(lab, obs, start)


def test_dig_large_answers_amplify(lab: Lab) -> None:
    start = lab.fresh()
    # 30 small TXT queries with ~1.3 KB answers: the responses outweigh the requests 20-fold
    lab.attack(
        [
            "dig",
            f"@{lab.victim.ip}",
            "+tries=1",
            "+time=2",
            "+bufsize=4096",
            *(["big.corp.test", "TXT"] * 30),
        ]
    )
    obs = lab.wait_for("DNS.Amplification", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.victim.ip, lab.attacker.ip)
    assert "response bytes" in obs.threats[0].evidence
    print(f"  {obs.threats[0].evidence}")
    _latency(lab, obs, start)
