"""A packet between two watched pods is fed to the network monitor once, not twice; a host
interface (the node's bridge) leaves to the pods' captures what they see."""

from __future__ import annotations

from types import SimpleNamespace

from meshward.core.observation import Identity
from meshward.tap.node.pipeline import NodeTap
from tests.support.frames import ether, icmp, ipv4


class Recorder:
    def __init__(self) -> None:
        self.fed: list[tuple[str, str, str]] = []

    def feed(self, pkt: object, where: str = "") -> list:
        self.fed.append((pkt.src, pkt.dst, where))  # type: ignore[attr-defined]
        return []


def test_pod_to_pod_packets_count_once() -> None:
    mon = Recorder()
    tap = NodeTap([], [], lambda obs: None, netmonitor=mon)
    a, b, outside = "10.213.0.2", "10.213.0.3", "10.213.0.1"
    tap.by_ip = {a: Identity("shop", "a", ip=a), b: Identity("shop", "b", ip=b)}
    tap.net_pod_ips = {"a:eth0": frozenset({a}), "b:eth0": frozenset({b})}
    tap._net_watched_changed()
    tap.host_where = {"br0"}
    on_a = tap._handler(SimpleNamespace(where="a:eth0"))  # type: ignore[arg-type]
    on_b = tap._handler(SimpleNamespace(where="b:eth0"))  # type: ignore[arg-type]
    ping = ether(ipv4(a, b, 1, icmp(8, 0, 1, 1, b"x" * 32)))
    on_a(ping, 1.0)  # a's egress copy: b's capture will see it arrive
    on_b(ping, 1.0)  # b's ingress copy: fed
    out = ether(ipv4(a, outside, 1, icmp(8, 0, 1, 2, b"x" * 32)))
    on_a(out, 1.0)  # to a peer no capture of ours sees: fed from a's side
    assert mon.fed == [(a, b, "b:eth0"), (a, outside, "a:eth0")]

    on_bridge = tap._handler(SimpleNamespace(where="br0"))  # type: ignore[arg-type]
    c, d = "10.213.0.4", "10.213.0.5"  # pods whose own interfaces are not watched
    for frame in (ping, out, ether(ipv4(outside, b, 1, icmp(8, 0, 1, 3, b"")))):
        on_bridge(frame, 1.0)  # a pod's capture feeds each of these
    on_bridge(ether(ipv4(c, d, 1, icmp(8, 0, 1, 4, b""))), 1.0)
    assert mon.fed[2:] == [(c, d, "br0")]
    assert tap.metrics.net_seen_by_pod == 3
