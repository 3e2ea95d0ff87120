"""The flusher: the one path from the engine's changes to the store."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from meshward.app.flusher import Flusher
from meshward.app.store import SqliteStore, StoreError, open_store
from meshward.core.engine import Engine, EngineConfig
from tests.support.openapi_traffic import Traffic


class Flaky(SqliteStore):
    """Fails the next `fail` alert writes; records the threads that wrote."""

    fail = 0
    threads: set[str]

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail:
            self.fail -= 1
            raise StoreError("disk full")
        super().add_alerts(alerts)


def _flusher(tmp_path: Path) -> tuple[Flusher, Flaky]:
    store = Flaky(str(tmp_path / "m.db"))
    store.threads = set()
    flusher = Flusher(Engine(EngineConfig(threats=False)), store)
    flusher.load()
    flusher.engine.set_mode("shop", "enforce")
    return flusher, store


def _deny(flusher: Flusher, n: int) -> None:
    t = Traffic(seed=n)
    for _ in range(n):
        assert flusher.engine.evaluate(t.deviation("unknown-endpoint")).verdict == "deny"


def test_a_failed_batch_is_kept_and_written_with_the_next(tmp_path: Path) -> None:
    flusher, store = _flusher(tmp_path)
    _deny(flusher, 3)
    store.fail = 1
    with pytest.raises(StoreError):
        flusher.flush()
    assert len(flusher.alerts(limit=100)) == 3  # still seen, from the kept batch
    _deny(flusher, 2)
    flusher.flush()
    assert len(store.alerts(limit=100)) == 5
    assert len(flusher.alerts(limit=100)) == 5  # no duplicates once written
    flusher.close()


def test_alerts_merge_pending_and_stored_newest_first(tmp_path: Path) -> None:
    flusher, _ = _flusher(tmp_path)
    _deny(flusher, 2)
    flusher.flush()
    _deny(flusher, 1)
    got = flusher.alerts(limit=10)
    assert len(got) == 3 and "id" not in got[0] and all("id" in a for a in got[1:])
    assert flusher.alerts(limit=10, namespace="elsewhere") == []
    assert len(flusher.alerts(limit=2)) == 2
    flusher.close()


def test_serve_writes_on_one_thread_off_the_loop(tmp_path: Path) -> None:
    flusher, store = _flusher(tmp_path)

    async def main() -> None:
        stop = asyncio.Event()
        errors: list[Exception] = []
        task = asyncio.create_task(flusher.run(stop, errors.append))
        _deny(flusher, 2)
        store.fail = 1
        with pytest.raises(StoreError):
            await flusher.flush_off_loop()
        assert len(await flusher.alerts_off_loop(10)) == 2
        await flusher.set_mode_off_loop("pay", "monitor")
        assert flusher.engine.mode_of("pay") == "monitor"
        stop.set()
        await task  # the last batch, the kept one with it
        assert errors == []
        await flusher.close_off_loop()

    asyncio.run(main())
    assert store.threads and all(n.startswith("meshward-store") for n in store.threads)
    with open_store(store.path) as again:
        assert len(again.alerts(limit=10)) == 2
        assert again.modes()["pay"] == "monitor"
