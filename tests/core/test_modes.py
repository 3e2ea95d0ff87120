"""The namespace modes; `off`: not judged, nothing learned, threats still alerted."""

from __future__ import annotations

import pytest

from meshward.core.engine import Engine, EngineConfig
from meshward.core.modes import DEFAULT_MODE, MODES
from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats.inspection import Inspection


class PathThreats:
    """A detector that finds a threat in /evil and fails on /boom."""

    def inspect(self, o: Observation, body: object = None) -> Inspection:
        if "boom" in o.path:
            raise ValueError("detector bug")
        return Inspection([Threat("SQL.Injection", "path", "evil")] if "evil" in o.path else [])


def request(path: str) -> Observation:
    return Observation(
        "file", source=Identity.parse("ns/a"), destination=Identity.parse("ns/api"), path=path
    )


def test_modes() -> None:
    assert MODES == ("off", "learn", "monitor", "enforce") and DEFAULT_MODE in MODES


def test_off_allows_learns_nothing_and_still_alerts_threats() -> None:
    engine = Engine(config=EngineConfig(), detector=PathThreats())
    engine.set_mode("ns", "off")
    assert engine.mode_of("ns") == "off"
    v = engine.evaluate(request("/never/seen"))
    assert (v.verdict, v.mode, v.reasons) == ("allow", "off", [])
    assert engine.allowlist.get("ns/api") is None  # nothing learned
    v = engine.evaluate(request("/evil"))
    assert v.verdict == "alert" and [t.name for t in v.threats] == ["SQL.Injection"]
    v = engine.evaluate(request("/boom"))
    assert v.verdict == "alert" and "inspection-failed" in v.reasons
    assert engine.allowlist.get("ns/api") is None
    # the same traffic in enforce (nothing learned) would be denied
    engine.set_mode("ns", "enforce")
    assert engine.evaluate(request("/never/seen")).verdict == "deny"


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="off, learn, monitor, enforce"):
        Engine(config=EngineConfig(), detector=PathThreats()).set_mode("ns", "block")
