"""The engine with the SQLite store: batched learning, restart keeps rules, shared modes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from meshward.app.flusher import Flusher
from meshward.app.store import open_store
from meshward.core.engine import Engine, EngineConfig
from tests.support.openapi_traffic import Traffic


def _on(db: str, config: EngineConfig, interval: float = 2.0) -> Flusher:
    flusher = Flusher(Engine(config), open_store(db), interval)
    flusher.load()
    return flusher


def test_restart_keeps_learned_rules_and_modes(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    first = _on(db, EngineConfig(threats=False), interval=3600)
    engine = first.engine
    t = Traffic(seed=3)
    for _ in range(500):
        engine.evaluate(t.normal())  # namespace "shop" defaults to learn
    first.set_mode("shop", "enforce")
    before = engine.allowlist.export_doc()
    first.close()

    second = _on(db, EngineConfig(threats=False))
    again = second.engine
    assert again.allowlist.export_doc() == before
    assert again.mode_of("shop") == "enforce"
    assert again.evaluate(Traffic(seed=4).normal()).verdict == "allow"
    assert again.evaluate(Traffic(seed=4).deviation("unknown-endpoint")).verdict == "deny"
    assert second.alerts(limit=10)[0]["verdict"] == "deny"  # pending alerts are seen too
    second.close()
    third = _on(db, EngineConfig(threats=False))  # history survives a restart
    assert third.alerts(limit=10, namespace="shop")[0]["verdict"] == "deny"
    assert third.alerts(limit=10, namespace="elsewhere") == []


def test_learning_is_batched_not_written_per_request(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "m.db"))
    writes: list[int] = []
    real = store.save_profiles

    def counting(docs: dict) -> None:
        writes.append(len(docs))
        real(docs)

    store.save_profiles = counting  # type: ignore[method-assign]
    flusher = Flusher(Engine(EngineConfig(threats=False)), store, interval=3600)
    flusher.load()
    t = Traffic(seed=3)
    for now in range(300):
        flusher.engine.evaluate(t.normal())
        flusher.flush_due(float(now))
    assert writes == []
    flusher.flush()
    assert writes == [1]


def test_mode_set_by_another_process_is_picked_up(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    flusher = _on(db, EngineConfig(threats=False), interval=0)
    engine = flusher.engine
    assert engine.mode_of("shop") == "learn"
    other = open_store(db)  # e.g. `meshward mode set shop monitor` while serve runs
    other.set_mode("shop", "monitor")
    other.close()
    engine.evaluate(Traffic(seed=1).normal())
    flusher.flush_due(1.0)
    flusher.flush_due(2.0)  # a flush picks up the change
    assert engine.mode_of("shop") == "monitor"


def test_a_stored_rule_this_version_refuses_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A profile stored before templates were checked holds a rule with a literal brace (older
    learning kept `/files/{draft}` as a literal): at start only that rule is dropped, counted
    and logged; the profile's other rules still allow."""
    db = str(tmp_path / "m.db")
    first = _on(db, EngineConfig(threats=False), interval=3600)
    t = Traffic(seed=3)
    for _ in range(300):
        first.engine.evaluate(t.normal())
    first.flush()
    dest = next(iter(first.engine.allowlist.services))
    doc = first.engine.allowlist.services[dest].to_doc()
    good = len(doc["endpoints"])
    old = {**doc["endpoints"][0], "path": "/files/{draft}"}
    doc["endpoints"].insert(1, old)
    first.store.save_profiles({dest: doc})  # as the older version wrote it
    first.close()

    with caplog.at_level(logging.WARNING, logger="meshward"):
        second = _on(db, EngineConfig(threats=False))
    engine = second.engine
    assert engine.allowlist.services[dest].endpoints == good
    assert engine.refused["stored-rule"] == 1
    logged = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert any(
        m == "stored rule dropped" and f["destination"] == dest and "{draft}" in f["error"]
        for m, f in logged
    ), logged
    assert not any(m == "profile skipped" for m, _ in logged)
    engine.set_mode("shop", "enforce")
    assert engine.evaluate(Traffic(seed=4).normal()).verdict == "allow"
    second.close()
