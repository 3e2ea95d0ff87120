"""The engine with the SQLite store: batched learning, restart keeps rules, shared modes."""

from __future__ import annotations

from pathlib import Path

from meshward.app.store import open_store
from meshward.core.engine import Engine, EngineConfig
from tests.support.openapi_traffic import Traffic


def test_restart_keeps_learned_rules_and_modes(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    engine = Engine(open_store(db), EngineConfig(threats=False, flush_interval=3600))
    t = Traffic(seed=3)
    for _ in range(500):
        engine.evaluate(t.normal())  # namespace "shop" defaults to learn
    engine.set_mode("shop", "enforce")
    before = engine.allowlist.export_doc()
    engine.close()

    again = Engine(open_store(db), EngineConfig(threats=False))
    assert again.allowlist.export_doc() == before
    assert again.mode_of("shop") == "enforce"
    assert again.evaluate(Traffic(seed=4).normal()).verdict == "allow"
    assert again.evaluate(Traffic(seed=4).deviation("unknown-endpoint")).verdict == "deny"
    assert again.alerts(limit=10)[0]["verdict"] == "deny"  # pending alerts are written first
    again.close()
    third = Engine(open_store(db), EngineConfig(threats=False))  # history survives a restart
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
    engine = Engine(store, EngineConfig(threats=False, flush_interval=3600))
    t = Traffic(seed=3)
    for _ in range(300):
        engine.evaluate(t.normal())
    assert writes == []
    engine.flush()
    assert writes == [1]


def test_mode_set_by_another_process_is_picked_up(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    engine = Engine(open_store(db), EngineConfig(threats=False, flush_interval=0))
    assert engine.mode_of("shop") == "learn"
    other = open_store(db)  # e.g. `meshward mode set shop monitor` while serve runs
    other.set_mode("shop", "monitor")
    other.close()
    engine.evaluate(Traffic(seed=1).normal())  # a flush picks up the change
    assert engine.mode_of("shop") == "monitor"
