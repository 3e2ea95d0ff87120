"""The control-plane watch on decoded SYNs: learning, the three rules, dedup, bounds."""

from __future__ import annotations

from meshward.core.controlplane import Endpoint, component_of, is_connection_report, service_ports
from meshward.core.observation import Identity, Observation
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS
from meshward.tap.node.controlplane import Client, ControlPlaneConfig, ControlPlaneMonitor
from meshward.tap.node.packet import decode
from tests.support.frames import ether, ipv4, tcp

ISTIOD = "10.1.0.10"
SVC = "10.96.0.15"
SYN, ACK = 0x02, 0x10


def endpoints(ip: str, port: int) -> Endpoint | None:
    ports = {15010: "xds-plaintext", 15012: "xds-tls", 15014: "monitoring-debug"}
    if ip in (ISTIOD, SVC) and port in ports:
        return Endpoint("istio", "istiod", port, ports[port], "istio-system", "istiod")
    return None


CLIENTS = {
    "10.1.0.2": Client(Identity("shop", "web"), sidecar=True),
    "10.1.0.3": Client(Identity("shop", "debug"), sidecar=False),
    "10.1.0.4": Client(Identity("monitoring", "prometheus"), sidecar=False),
}


def syn(
    src: str,
    dst: str,
    dport: int,
    sport: int = 40000,
    seq: int = 1,
    ts: float = 100.0,
    flags: int = SYN,
):
    pkt = decode(ether(ipv4(src, dst, 6, tcp(sport, dport, seq, 0, flags))), ts)
    assert pkt is not None
    return pkt


def alerts(out: list[Observation]) -> list[Observation]:
    return [o for o in out if o.threats]


def monitor(modes: dict[str, str] | None = None, **cfg) -> ControlPlaneMonitor:
    modes = modes or {}
    return ControlPlaneMonitor(
        endpoints,
        CLIENTS.get,
        lambda ns: modes.get(ns, "learn"),
        ControlPlaneConfig(**cfg),
    )


def test_a_client_without_sidecar_on_the_debug_port_is_alerted_in_every_mode() -> None:
    mon = monitor()
    out = mon.feed(syn("10.1.0.3", ISTIOD, 15014))
    assert [o.threats[0].name for o in out] == [MESH_CONTROL_PLANE_ACCESS]
    alert = out[0]
    assert alert.extra["rule"] == "open-port"
    assert alert.source.key == "shop/debug" and alert.destination.key == "istio-system/istiod"
    assert alert.extra["client_sidecar"] == "false" and alert.destination.port == 15014
    assert mon.feed(syn("10.1.0.3", ISTIOD, 15010, sport=40001))[0].extra["rule"] == "open-port"


def test_a_sidecar_on_15012_and_an_allowed_scraper_raise_nothing() -> None:
    mon = monitor(open_port_clients=("monitoring/prometheus",))
    assert alerts(mon.feed(syn("10.1.0.2", ISTIOD, 15012))) == []
    assert alerts(mon.feed(syn("10.1.0.4", ISTIOD, 15014))) == []
    assert mon.learned() == {
        "istio-system/istiod:15012": ["shop/web (sidecar)"],
        "istio-system/istiod:15014": ["monitoring/prometheus (no sidecar)"],
    }


def test_after_learning_a_new_client_kind_is_alerted_once() -> None:
    modes = {"shop": "learn"}
    mon = monitor(modes)
    assert alerts(mon.feed(syn("10.1.0.2", ISTIOD, 15012))) == []
    modes["shop"] = "monitor"
    assert (
        alerts(mon.feed(syn("10.1.0.2", SVC, 15012, sport=40002))) == []
    )  # via the Service: same kind
    # the same pod on a port it never used while learning
    CLIENTS["10.1.0.5"] = Client(Identity("shop", "web"), sidecar=False)
    try:
        out = mon.feed(syn("10.1.0.5", ISTIOD, 15012, sport=40003))
        assert [o.extra["rule"] for o in out] == ["new-client"]
        assert "shop/web (no sidecar)" in out[0].threats[0].evidence
        assert alerts(mon.feed(syn("10.1.0.5", ISTIOD, 15012, sport=40004))) == []  # deduplicated
        summary = mon.tick(100.0 + 61)
        assert len(summary) == 1 and summary[0].extra["repeats"] == "1"
    finally:
        del CLIENTS["10.1.0.5"]


def test_one_connection_seen_twice_counts_once_and_other_packets_are_ignored() -> None:
    mon = monitor({"shop": "monitor"})
    assert len(mon.feed(syn("10.1.0.3", SVC, 15014))) == 1
    assert alerts(mon.feed(syn("10.1.0.3", ISTIOD, 15014))) == []  # after the Service's DNAT
    assert mon.stats["cp_syn_repeats"] == 1
    assert alerts(mon.feed(syn("10.1.0.2", ISTIOD, 15012, flags=SYN | ACK, sport=1))) == []
    assert (
        alerts(mon.feed(syn("10.1.0.2", "10.1.0.99", 15012, sport=2))) == []
    )  # not the control plane
    assert alerts(mon.feed(syn("10.9.9.9", ISTIOD, 15012, sport=3))) == []  # not a pod of this node
    assert mon.stats["cp_not_ours"] == 1


def test_a_burst_of_new_connections_is_alerted() -> None:
    mon = monitor(burst_connections=20, burst_window=10.0)
    rules = []
    for i in range(30):
        rules += [
            o.extra["rule"]
            for o in alerts(mon.feed(syn("10.1.0.2", ISTIOD, 15012, sport=i, ts=100.0 + i * 0.1)))
        ]
    assert rules == ["burst"]


def test_memory_stays_bounded_under_a_syn_flood() -> None:
    mon = monitor(max_syns=100, max_clients=10, burst_connections=10**6)
    for i in range(5000):
        mon.feed(syn("10.1.0.2", ISTIOD, 15012, sport=i % 65000, seq=i, ts=100.0 + i * 1e-4))
    assert len(mon._syns) <= 100
    assert mon.stats["cp_syns_evicted"] >= 4900
    mon.tick(200.0)
    assert not mon._syns


def test_components_are_recognised_by_labels_and_service_ports() -> None:
    istiod = component_of({"app": "istiod", "istio.io/rev": "default"})
    assert istiod is not None and istiod.name == "istiod" and 15014 in istiod.ports
    dst = component_of({"linkerd.io/control-plane-component": "destination"})
    assert dst is not None and set(dst.ports) == {8086, 8090}
    ident = component_of({"linkerd.io/control-plane-component": "identity"})
    assert ident is not None and set(ident.ports) == {8080}
    assert component_of({"app": "web"}) is None and component_of(None) is None
    spec = {
        "ports": [
            {"port": 15012, "targetPort": 15012},
            {"port": 443, "targetPort": 15017},
            {"port": 80, "targetPort": 8080},
            {"port": 15010, "protocol": "UDP"},
            {"port": "x"},
        ]
    }
    assert service_ports(spec, istiod) == {15012: 15012, 443: 15017}


def test_quiet_connections_are_reported_once_per_kind_and_interval() -> None:
    mon = monitor(report_interval=60.0)
    first = mon.feed(syn("10.1.0.2", ISTIOD, 15012, sport=1, ts=100.0))
    assert len(first) == 1 and is_connection_report(first[0])
    report = first[0]
    assert report.source.key == "shop/web" and report.destination.key == "istio-system/istiod"
    assert report.extra["component_port"] == "15012" and report.extra["client_sidecar"] == "true"
    assert mon.feed(syn("10.1.0.2", ISTIOD, 15012, sport=2, ts=130.0)) == []
    assert len(mon.feed(syn("10.1.0.2", ISTIOD, 15012, sport=3, ts=161.0))) == 1
    # an alerting connection is not also reported
    out = mon.feed(syn("10.1.0.3", ISTIOD, 15014, sport=4, ts=161.5))
    assert [bool(o.threats) for o in out] == [True]
