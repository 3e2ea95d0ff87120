"""serve's pipeline takes a node tap's control-plane connection report as one allowed call on
its edge, learns nothing from it, and judges a control-plane alert the usual way."""

from __future__ import annotations

from meshward.app.pipeline import Pipeline
from meshward.core.controlplane import CONNECTION, REPORT_KEY
from meshward.core.engine import Engine
from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner

WEB = Identity("shop", "web", ip="10.0.0.2", port=40000)
ISTIOD = Identity("istio-system", "istiod", ip="10.0.0.9", port=15012)


def test_a_connection_report_counts_on_its_edge_and_teaches_nothing() -> None:
    pipeline = Pipeline(Engine(), Metrics(), Joiner())
    report = Observation(
        seen_by="node-tap",
        source=WEB,
        destination=ISTIOD,
        protocol="tcp",
        time=1000.0,
        extra={REPORT_KEY: CONNECTION},
    )
    pipeline.take_ingested(report)
    edges = [e.as_dict() for e in pipeline.engine.edges.peek()]
    assert [(e["source"], e["destination"], e["allowed"]) for e in edges] == [
        ("shop/web", "istio-system/istiod", 1)
    ]
    assert pipeline.engine.allowlist.export_doc().get("services", []) == []


def test_a_control_plane_alert_is_recorded() -> None:
    pipeline = Pipeline(Engine(), Metrics(), Joiner())
    alert = Observation(
        seen_by="node-tap",
        source=WEB,
        destination=ISTIOD,
        protocol="tcp",
        time=1000.0,
        threats=[Threat(MESH_CONTROL_PLANE_ACCESS, "network", "no sidecar on 15014")],
    )
    pipeline.take_ingested(alert)
    (recorded,) = pipeline.engine.alerts()
    assert recorded["threats"][0]["name"] == MESH_CONTROL_PLANE_ACCESS
    assert recorded["source"] == "shop/web" and recorded["destination"] == "istio-system/istiod"
    assert pipeline.engine.allowlist.export_doc().get("services", []) == []
