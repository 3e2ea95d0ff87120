"""--threat-level and --deny-threshold reach the engine; bad values are one-line errors."""

from __future__ import annotations

import argparse

import pytest

from meshward.app.commands import UsageError
from meshward.app.commands.engineflags import add_engine_flags, engine_config


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_engine_flags(p)
    return p.parse_args(list(argv))


def test_flags_then_environment_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHWARD_THREAT_LEVEL", raising=False)
    monkeypatch.delenv("MESHWARD_DENY_THRESHOLD", raising=False)
    c = engine_config(parse())
    assert (c.threat_level, c.deny_threshold) == (1, 0.5)
    monkeypatch.setenv("MESHWARD_THREAT_LEVEL", "2")
    monkeypatch.setenv("MESHWARD_DENY_THRESHOLD", "0.8")
    c = engine_config(parse())
    assert (c.threat_level, c.deny_threshold) == (2, 0.8)
    c = engine_config(parse("--threat-level", "3", "--deny-threshold", "0.3"), threats=False)
    assert (c.threat_level, c.deny_threshold, c.threats) == (3, 0.3, False)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("MESHWARD_THREAT_LEVEL", "9", "threat level"),
        ("MESHWARD_THREAT_LEVEL", "high", "MESHWARD_THREAT_LEVEL"),
        ("MESHWARD_DENY_THRESHOLD", "0", "deny threshold"),
        ("MESHWARD_DENY_THRESHOLD", "1.5", "deny threshold"),
    ],
)
def test_bad_values(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(UsageError, match=message):
        engine_config(parse())


def test_a_higher_deny_threshold_lets_weak_deviations_through() -> None:
    from meshward.core.engine import Engine
    from tests.support.openapi_traffic import Traffic

    cfg = engine_config(parse("--deny-threshold", "0.9"), threats=False)
    engine = Engine(config=cfg)
    t = Traffic(seed=3)
    for _ in range(2000):
        engine.evaluate(t.normal(), mode="learn")
    v = engine.evaluate(t.deviation("unknown-caller"), mode="enforce")
    assert v.verdict == "alert" and v.score < 0.9
