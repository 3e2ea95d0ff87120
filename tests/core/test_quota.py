"""meshward.core.quota: the alert quotas the engine applies between two drains."""

from __future__ import annotations

import pytest

from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation
from meshward.core.quota import AlertQuota, QuotaGate
from meshward.core.threats.inspection import NoDetector


def test_gate_admits_under_quota_and_counts_refusals() -> None:
    gate = QuotaGate(AlertQuota(per_source=2, per_destination=3, total=4))
    got = [gate.admit("s1", "d1") for _ in range(3)]
    assert got == ["", "", "alert-source-quota"]
    assert gate.admit("s2", "d1") == ""
    assert gate.admit("s3", "d1") == "alert-destination-quota"
    assert gate.admit("s3", "d2") == ""
    assert gate.admit("s4", "d3") == "alert-total-quota"
    assert dict(gate.refused) == {
        "alert-source-quota": 1,
        "alert-destination-quota": 1,
        "alert-total-quota": 1,
    }
    gate.reset()
    assert gate.admit("s1", "d1") == ""
    with pytest.raises(ValueError):
        AlertQuota(per_source=0)


def test_scaled_keeps_the_shares_of_a_larger_history() -> None:
    assert AlertQuota().scaled(1_000_000) == AlertQuota(100_000, 200_000, 1_000_000)
    assert AlertQuota(per_source=3, per_destination=7, total=10).scaled(25) == AlertQuota(7, 17, 25)
    assert AlertQuota().scaled(5) == AlertQuota(1, 1, 5)  # at least one each
    with pytest.raises(ValueError):
        AlertQuota().scaled(0)


def test_engine_pending_alerts_keep_room_for_others() -> None:
    quota = AlertQuota(per_source=10, per_destination=100, total=1000)
    engine = Engine(EngineConfig(default_mode="monitor", alert_quota=quota), NoDetector())
    for i in range(500):
        engine.evaluate(
            Observation("node-tap", Identity("x", "evil"), Identity("shop", "api"), path=f"/{i}")
        )
    engine.evaluate(Observation("node-tap", Identity("shop", "web"), Identity("shop", "api")))
    alerts = engine.drain().alerts
    assert [a["source"] for a in alerts] == ["x/evil"] * 10 + ["shop/web"]
    assert engine.refused["alert-source-quota"] == 490
    assert len(engine.alerts(limit=1000)) == 501  # the in-memory recent view is not gated
