"""The one table of reason codes and the one registry of threat names, and who uses them."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from meshward.core import reasons, scoring
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation
from meshward.core.threats.names import EXCHANGE_MISMATCH, NETWORK_THREATS, THREAT_NAMES
from meshward.tap.envoy.join import Joiner

ROOT = Path(__file__).resolve().parents[2]
DOTTED = re.compile(r"^[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)+$")  # how threat names look


def _codes() -> set[str]:
    return {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}


def test_every_reason_code_has_its_weight() -> None:
    assert _codes() == set(reasons.WEIGHTS)


def test_no_module_spells_a_reason_or_threat_name_itself() -> None:
    """Producers import the constants: a literal that equals a registered code is a second
    spelling, and a literal shaped like a threat name is one the registry may not know (only
    the registries themselves and the docs hold them)."""
    registries = {ROOT / "meshward/core/reasons.py", ROOT / "meshward/core/threats/names.py"}
    names = _codes() | THREAT_NAMES
    found = []
    for folder in ("meshward/core", "extauthz", "tap", "istio", "linkerd", "meshward/formats"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in registries:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                    continue
                if node.value in names or DOTTED.match(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert found == []


def _view(direction: str, path: str) -> Observation:
    return Observation(
        seen_by="envoy-tap",
        source=Identity("shop", "web"),
        destination=Identity("shop", "api"),
        method="GET",
        path=path,
        request_id="r1",
        authority="api.shop",
        direction=direction,
    )  # type: ignore[arg-type]


def test_both_ends_mismatch_is_produced_next_to_the_threat() -> None:
    """The join's Exchange.Mismatch on the re-judged inbound view brings the reason too."""
    joiner = Joiner()
    assert joiner.add(_view("outbound", "/items")) is None
    joined = joiner.add(_view("inbound", "/admin"))
    assert joined is not None
    _, threats, inbound = joined
    assert [t.name for t in threats] == [EXCHANGE_MISMATCH]
    engine = Engine(config=EngineConfig(threats=False))
    flagged = dataclasses.replace(inbound, threats=[*inbound.threats, *threats])
    for mode in ("learn", "monitor", "enforce"):
        v = engine.evaluate(flagged, mode=mode, learn=False)
        assert reasons.BOTH_ENDS_MISMATCH in v.reasons and v.verdict != "allow"
        assert [t.name for t in v.threats] == [EXCHANGE_MISMATCH]
    plain = engine.evaluate(inbound, mode="monitor")
    assert reasons.BOTH_ENDS_MISMATCH not in plain.reasons
    assert scoring.flags([], False) == []


def test_every_threat_a_detector_emits_is_registered() -> None:
    """Run the detectors on payloads of every kind and check the names against the registry
    (the HTTP detector's coverage is in tests/core/threats/test_detector.py)."""
    from meshward.core.threats import HTTP_THREATS, default_detector

    detector = default_detector()
    payloads = [
        "id=1' or 1=1--",
        "q=<script>alert(1)</script>",
        "f=../../../../etc/passwd",
        "u=${jndi:ldap://x/a}",
        "c=;cat /etc/passwd",
        "t={{7*7}}",
    ]
    seen = set()
    for query in payloads:
        seen |= {t.name for t in detector.inspect(Observation(seen_by="file", query=query)).threats}
    assert seen and seen <= set(HTTP_THREATS) <= THREAT_NAMES
    assert set(NETWORK_THREATS) <= THREAT_NAMES
