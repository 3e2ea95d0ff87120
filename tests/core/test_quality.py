"""Learning quality on the OpenAPI sample: few false alerts, nearly every deviation flagged."""

from __future__ import annotations

from meshward.core.engine import Engine, EngineConfig
from tests.support.openapi_traffic import DEVIATIONS, Traffic


def learned_engine(n: int = 4000) -> tuple[Engine, Traffic]:
    engine = Engine(config=EngineConfig(threats=False))
    traffic = Traffic(seed=7)
    for _ in range(n):
        engine.evaluate(traffic.normal(), mode="learn")
    return engine, traffic


def test_held_out_normal_traffic_raises_few_false_alerts() -> None:
    engine, _ = learned_engine()
    held_out = Traffic(seed=99)  # same API, values never seen while learning
    n = 4000
    flagged = [v for v in (engine.evaluate(held_out.normal(), mode="monitor") for _ in range(n))]
    false = [v for v in flagged if v.verdict != "allow"]
    assert len(false) / n <= 0.005, [(v.rule, v.reasons) for v in false[:10]]


def test_deviations_are_flagged() -> None:
    engine, _ = learned_engine()
    bad = Traffic(seed=1234)
    for kind in DEVIATIONS:
        verdicts = [engine.evaluate(bad.deviation(kind), mode="monitor") for _ in range(500)]
        missed = [v for v in verdicts if v.verdict == "allow"]
        assert len(missed) / len(verdicts) <= 0.01, (
            kind,
            [(v.rule, v.reasons) for v in missed[:5]],
        )


def test_enforce_denies_deviations_and_allows_normal() -> None:
    engine, _ = learned_engine()
    t = Traffic(seed=5)
    assert engine.evaluate(t.deviation("unknown-endpoint"), mode="enforce").verdict == "deny"
    assert engine.evaluate(t.deviation("unknown-caller"), mode="enforce").verdict == "deny"
    allowed = sum(
        engine.evaluate(t.normal(), mode="enforce").verdict == "allow" for _ in range(500)
    )
    assert allowed >= 497


def test_rules_are_templated() -> None:
    engine, _ = learned_engine()
    profile = engine.allowlist.get("shop/api")
    assert profile is not None
    names = {r.name for r in profile.rules()}
    assert "GET /products/{int}" in names
    assert "GET /users/{uuid}" in names
    assert "DELETE /orders/{hex}" in names
    assert "GET /files/{str}" in names  # cardinality-based: many distinct file names
    assert len(names) == 12  # one rule per operation of the document
