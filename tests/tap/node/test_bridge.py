"""Pod-to-pod ICMP/UDP/DNS threats seen on the node's bridge, as the bridge CNI wires pods.

Two pods on veths into a Linux bridge (tests.support.netns); the node tap watches the bridge
(`--iface br0`, a host interface). Without a promiscuous membership the bridge device hands up
only frames addressed to the host, so the frames it forwards between the two pods are never
seen (the gap the issue measured: 6 of 6,000 packets of an hping3 flood). With it, every one is
seen once, the threats are named with real tools, and benign ping and DNS raise nothing.
"""

from __future__ import annotations

import json
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshward.tap.node.pipeline import NodeTap
from tests.conftest import need_tools
from tests.support.netlab import Lab, lab_on, promiscuity
from tests.support.netns import Node, need_netns

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[3]


def _subnet() -> str:
    return f"10.215.{random.randrange(256)}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_netns()
    need_tools("hping3", "nmap", "dig", "dnsmasq", "ping", "timeout")
    with lab_on(_subnet(), watch="bridge") as lab:
        yield lab


def _fed(lab: Lab) -> int:
    time.sleep(1.2)  # past a block timeout and a tick
    return lab.monitor.inner.stats["packets"]


def test_benign_ping_and_dns_seen_once_and_raise_nothing(lab: Lab) -> None:
    lab.fresh()
    v = lab.victim.ip
    lab.attack(["ping", "-c", "3", "-i", "0.2", v])
    lab.attack(["dig", f"@{v}", "+tries=1", "+time=2", "www.corp.test", "api.corp.test", "MX"])
    # 3 echo requests + 3 replies, 2 queries + 2 answers: each frame counted once on the bridge
    assert _fed(lab) == 10
    assert lab.alerts == []
    assert promiscuity(lab.node, lab.node.bridge) == 1


def test_hping3_icmp_flood_between_pods(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(["hping3", "-1", "-i", "u1", "-q", "-c", "20000", lab.victim.ip], timeout=2)
    obs = lab.wait_for("ICMP.Flood", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)
    assert obs.extra["where"] == f"{lab.node.netns}:{lab.node.bridge}"


def test_hping3_udp_flood_between_pods(lab: Lab) -> None:
    start = lab.fresh()
    lab.attack(
        ["hping3", "-2", "-i", "u1", "-q", "-c", "20000", "-p", "9999", lab.victim.ip], timeout=2
    )
    obs = lab.wait_for("UDP.Flood", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)


def test_nmap_udp_port_scan_between_pods(lab: Lab) -> None:
    start = lab.fresh()
    cmd = ["nmap", "-sU", "-n", "-Pn", "-T5", "--max-retries", "0", "-p", "1-100"]
    lab.attack([*cmd, "--host-timeout", "10s", lab.victim.ip], timeout=15)
    obs = lab.wait_for("UDP.Port.Scan", start)
    assert (obs.source.ip, obs.destination.ip) == (lab.attacker.ip, lab.victim.ip)


def test_dns_tunnelling_between_pods(lab: Lab) -> None:
    start = lab.fresh()
    rnd = random.Random()
    alphabet = string.ascii_lowercase + "234567"
    names = ["".join(rnd.choice(alphabet) for _ in range(52)) + ".x.corp.test" for _ in range(5)]
    lab.attack(["dig", f"@{lab.victim.ip}", "+tries=1", "+time=1", *names])
    obs = lab.wait_for("DNS.Tunneling", start)
    assert obs.protocol == "dns" and "corp.test" in obs.threats[0].evidence


def test_without_promiscuous_mode_the_bridge_misses_pod_to_pod() -> None:
    """The control: the same bridge, no membership, sees none of the pods' pings."""
    need_netns()
    need_tools("ping", "dnsmasq", "timeout")
    with lab_on(_subnet(), watch="bridge", promisc=False) as lab:
        lab.fresh()
        assert promiscuity(lab.node, lab.node.bridge) == 0
        lab.attack(["ping", "-c", "5", "-i", "0.2", lab.victim.ip])
        assert _fed(lab) == 0


def test_bridge_and_pod_capture_count_each_packet_once() -> None:
    """The victim's eth0 is watched too: the bridge leaves its packets to it."""
    need_netns()
    need_tools("ping", "dnsmasq", "timeout")
    with lab_on(_subnet(), watch="both") as lab:
        lab.fresh()
        lab.attack(["ping", "-c", "5", "-i", "0.2", lab.victim.ip])
        assert _fed(lab) == 10
        assert lab.tap.metrics.net_seen_by_pod == 10  # the bridge's copies, left to the pod


def test_membership_goes_with_the_socket() -> None:
    """Closed, or the agent killed with SIGKILL: the kernel drops the membership it counted."""
    need_netns()
    with Node(subnet=_subnet()) as node:
        tap = NodeTap([], [node.bridge], lambda obs: None, host_netns=node.netns)
        tap.open()
        assert promiscuity(node, node.bridge) == 1
        tap.close()
        assert promiscuity(node, node.bridge) == 0
        proc = node.popen(
            [sys.executable, "-m", "meshward", "node-tap", "--iface", node.bridge],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"capturing"' in line:
                assert json.loads(line)["where"] == node.bridge
                break
        assert promiscuity(node, node.bridge) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert promiscuity(node, node.bridge) == 0
