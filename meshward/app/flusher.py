"""The one path from the engine to the store: drain what changed, write it in one batch.

The engine (sans-IO) keeps what it learned and the alerts it raised in memory; the flusher takes
them (`Engine.drain`, on the thread that drives the engine, so the snapshot is consistent) and
writes them. Offline commands call the plain methods on their own thread (`flush_due(now)` after
each request: a kill -9 loses at most the last interval). `meshward serve` calls the `_off_loop`
twins: every store call (batches, alert reads, mode changes) runs on one writer thread, in order,
so the event loop never waits for SQLite and the store's connection is used by one thread at a
time. A batch that fails to write is kept and merged into the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from meshward.app.store import Store
from meshward.core.engine import MAX_PENDING_ALERTS, Changes, Engine

T = TypeVar("T")
Alert = dict[str, Any]


def _merge(older: Changes, newer: Changes) -> Changes:
    if not older:
        return newer
    alerts = [*older.alerts, *newer.alerts][-MAX_PENDING_ALERTS:]
    return Changes({**older.profiles, **newer.profiles}, alerts)


class Flusher:
    """Writes the engine's changes to `store` every `interval` seconds, and at close."""

    def __init__(self, engine: Engine, store: Store, interval: float = 2.0) -> None:
        self.engine = engine
        self.store = store
        self.interval = interval
        self._last: float | None = None  # when the last batch was taken (the caller's clock)
        self._taken = 0  # batches taken from the engine (engine's thread)
        self._unwritten: dict[int, list[Alert]] = {}  # their alerts until written (engine's thread)
        self._retry = Changes()  # a batch that failed, merged into the next (engine's thread)
        self._written = 0  # the newest batch committed (writer's thread)
        self._modes_version: int | None = None  # the modes the engine has (writer's thread)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="meshward-store")

    def load(self) -> None:
        """Give the engine the stored profiles and modes (before it judges anything)."""
        self._modes_version = self.store.modes_version()
        self.engine.load(self.store.load_profiles(), self.store.modes())

    # ---- the steps of one batch
    def _take(self) -> tuple[int, Changes]:
        """On the engine's thread: drain the engine, with a failed batch merged in."""
        changes = _merge(self._retry, self.engine.drain())
        self._retry = Changes()
        self._taken += 1
        if changes.alerts:
            self._unwritten[self._taken] = changes.alerts
        return self._taken, changes

    def _write(self, batch: int, changes: Changes) -> dict[str, str] | None:
        """On the writer's thread: the batch, then the modes when another process changed them."""
        if changes.profiles:
            self.store.save_profiles(changes.profiles)
        if changes.alerts:
            self.store.add_alerts(changes.alerts)
        self._written = batch
        version = self.store.modes_version()
        if version == self._modes_version:
            return None
        self._modes_version = version
        return self.store.modes()

    def _settle(
        self, batch: int, changes: Changes, modes: dict[str, str] | None, failed: bool
    ) -> None:
        """On the engine's thread: forget a written batch, keep a failed one, apply new modes."""
        self._unwritten.pop(batch, None)
        if failed:
            self._retry = _merge(changes, self._retry)
        if modes is not None:
            self.engine.set_modes(modes)

    def _store_mode(self, namespace: str, mode: str) -> None:
        self.store.set_mode(namespace, mode)
        self._modes_version = self.store.modes_version()

    def _stored_alerts(self, limit: int, namespace: str | None) -> tuple[list[Alert], int]:
        return self.store.alerts(limit=limit, namespace=namespace), self._written

    def _with_pending(
        self, stored: list[Alert], written: int, limit: int, namespace: str | None
    ) -> list[Alert]:
        """Newest first: what is not written yet (as of the store read), then the stored ones."""
        pending = [*self._retry.alerts]
        for batch in sorted(self._unwritten):
            if batch > written:
                pending += self._unwritten[batch]
        pending += self.engine.pending_alerts()
        newest = reversed(pending)
        if namespace is not None:
            newest = (a for a in newest if a.get("namespace") == namespace)
        return list(itertools.islice(itertools.chain(newest, stored), max(0, limit)))

    # ---- on the caller's thread (offline commands, tests)
    def flush(self) -> None:
        batch, changes = self._take()
        try:
            modes = self._write(batch, changes)
        except Exception:
            self._settle(batch, changes, None, failed=True)
            raise
        self._settle(batch, changes, modes, failed=False)

    def flush_due(self, now: float) -> None:
        """Flush when `interval` seconds (of the caller's monotonic clock) passed since the last."""
        if self._last is None:
            self._last = now
        elif now - self._last >= self.interval:
            self._last = now
            self.flush()

    def alerts(self, limit: int = 100, namespace: str | None = None) -> list[Alert]:
        """The newest alerts first: the stored history and what is still pending."""
        stored, written = self._stored_alerts(limit, namespace)
        return self._with_pending(stored, written, limit, namespace)

    def set_mode(self, namespace: str, mode: str) -> None:
        self._store_mode(namespace, mode)
        self.engine.set_mode(namespace, mode)

    def save_allowlist(self, destinations: list[str] | None = None, replace: bool = False) -> None:
        """Write the allowlist now (after an import or a human edit), all of it with `replace`."""
        docs = {d: p.to_doc() for d, p in self.engine.allowlist.services.items()}
        if replace:
            self.store.replace_profiles(docs)
        else:
            wanted = set(destinations) if destinations is not None else set(docs)
            self.store.save_profiles({d: docs[d] for d in wanted if d in docs})

    def close(self) -> None:
        """The last batch, then the store is closed (even when the batch fails)."""
        try:
            self.flush()
        finally:
            self.store.close()
            self._writer.shutdown()

    # ---- from the event loop (meshward serve): the store calls run on the writer thread
    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def flush_off_loop(self) -> None:
        batch, changes = self._take()
        try:
            modes = await self._off_loop(self._write, batch, changes)
        except Exception:
            self._settle(batch, changes, None, failed=True)
            raise
        self._settle(batch, changes, modes, failed=False)

    async def run(self, stop: asyncio.Event, failed: Callable[[Exception], None]) -> None:
        """Flush every `interval` until `stop` is set, then once more; `failed` hears of errors
        (the batch is kept for the next try)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            try:
                await self.flush_off_loop()
            except Exception as exc:
                failed(exc)

    async def alerts_off_loop(self, limit: int = 100, namespace: str | None = None) -> list[Alert]:
        stored, written = await self._off_loop(self._stored_alerts, limit, namespace)
        return self._with_pending(stored, written, limit, namespace)

    async def set_mode_off_loop(self, namespace: str, mode: str) -> None:
        """Stored first, then in the engine: a batch that read the old modes is settled before."""
        await self._off_loop(self._store_mode, namespace, mode)
        self.engine.set_mode(namespace, mode)

    async def close_off_loop(self) -> None:
        """Close the store on the writer thread (after `run` wrote the last batch)."""
        try:
            await self._off_loop(self.store.close)
        finally:
            self._writer.shutdown()
