"""meshward.core.claims: what serve keeps of what an ingested observation says of itself."""

from __future__ import annotations

from meshward.core.claims import distrusted, verdict_fields
from meshward.core.observation import Observation, Threat
from meshward.core.threats import names


def test_http_threats_are_dropped_whatever_their_name() -> None:
    obs = Observation(
        seen_by="node-tap",
        threats=[
            Threat(names.SQLI, "query:id", "<b>x</b>"),
            Threat("Made.Up", "network", "x"),
            Threat(names.ICMP_FLOOD, "network", "x"),  # a network name on an HTTP exchange
        ],
    )
    kept, dropped = distrusted(obs)
    assert (kept.threats, dropped) == ([], 3)
    assert len(obs.threats) == 3  # the caller's object is not changed


def test_a_node_taps_network_event_is_kept() -> None:
    flood = Threat(names.ICMP_FLOOD, "network", "900 pkt/s")
    for seen_by, protocol, kept_n in (
        ("node-tap", "icmp", 1),
        ("node-tap", "udp", 1),
        ("file", "icmp", 0),
        ("envoy-tap", "icmp", 0),
        ("node-tap", "http/1.1", 0),
    ):
        obs = Observation(seen_by=seen_by, protocol=protocol, threats=[flood])  # type: ignore[arg-type]
        kept, dropped = distrusted(obs)
        assert (len(kept.threats), dropped) == (kept_n, 1 - kept_n), (seen_by, protocol)
    clean = Observation(seen_by="node-tap")
    assert distrusted(clean) == (clean, 0)


def test_verdict_fields_are_counted() -> None:
    assert verdict_fields({"path": "/", "verdict": "deny", "score": 1, "reasons": []}) == 3
    assert verdict_fields({"path": "/"}) == 0


def test_the_mesh_guards_traffic_findings_are_kept_on_their_protocols_only() -> None:
    cp = Threat(names.MESH_CONTROL_PLANE_ACCESS, "network", "debug port")
    bypass = Threat(names.MESH_SIDECAR_BYPASS, "network", "around the proxy")
    for threat, seen_by, protocol, kept_n in (
        (cp, "node-tap", "tcp", 1),
        (bypass, "node-tap", "http/1.1", 1),
        (bypass, "node-tap", "h2", 1),
        (cp, "node-tap", "http/1.1", 0),
        (bypass, "node-tap", "tcp", 0),
        (cp, "file", "tcp", 0),
        (Threat(names.MESH_SIDECAR_BYPASS, "path", "x"), "node-tap", "http/1.1", 0),
        (Threat(names.MESH_MTLS_WEAKENED, "network", "x"), "node-tap", "tcp", 0),
    ):
        obs = Observation(seen_by=seen_by, protocol=protocol, threats=[threat])  # type: ignore[arg-type]
        kept, dropped = distrusted(obs)
        assert (len(kept.threats), dropped) == (kept_n, 1 - kept_n), (threat.name, protocol)
