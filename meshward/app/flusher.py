"""The one path from the engine to the store: drain what changed, write it in one batch.

The engine (sans-IO) keeps what it learned and the alerts it raised in memory; the flusher takes
them (`Engine.drain`, on the thread that drives the engine, so the snapshot is consistent) and
writes them. Offline commands call the plain methods on their own thread (`flush_due(now)` after
each request: a kill -9 loses at most the last interval). `meshward serve` calls the `_off_loop`
twins: every store call (batches, alert reads, mode changes) runs on one writer thread, in order,
so the event loop never waits for SQLite and the store's connection is used by one thread at a
time. A batch that fails to write is kept and merged into the next one.

A shared store (the cluster store) also has other writers: with `sharing`, every batch ends by
taking their changes (writer thread) and applying them to the engine (engine's thread), so what
other replicas learned and what people edited is in effect within one flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from meshward.app.store import Store
from meshward.core.edges import add_pending, merge_counts
from meshward.core.engine import MAX_PENDING_ALERTS, Changes, Engine

T = TypeVar("T")
Alert = dict[str, Any]


def _merge(older: Changes, newer: Changes) -> Changes:
    if not older:
        return newer
    alerts = [*older.alerts, *newer.alerts][-MAX_PENDING_ALERTS:]
    edges = merge_counts(older.edges, newer.edges) if older.edges else newer.edges
    return Changes({**older.profiles, **newer.profiles}, alerts, edges)


@dataclass
class Sharing:
    """A shared store's other writers: `take()` their changes (on the writer thread, after a
    batch), `apply(changes)` them to the engine (on the engine's thread)."""

    take: Callable[[], Any]
    apply: Callable[[Any], None]


class Flusher:
    """Writes the engine's changes to `store` every `interval` seconds, and at close.

    `changed` is called (engine's thread) after modes changed by another process were applied.
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        interval: float = 2.0,
        *,
        sharing: Sharing | None = None,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.interval = interval
        self.sharing = sharing
        self.changed = changed
        self._last: float | None = None  # when the last batch was taken (the caller's clock)
        self._taken = 0  # batches taken from the engine (engine's thread)
        self._unwritten: dict[int, list[Alert]] = {}  # their alerts until written (engine's thread)
        self._retry = Changes()  # a batch that failed, merged into the next (engine's thread)
        self._written = 0  # the newest batch committed (writer's thread)
        self._modes_version: int | None = None  # the modes the engine has (writer's thread)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="meshward-store")

    def load(self) -> None:
        """Give the engine the stored profiles and modes (before it judges anything)."""
        self.engine.load(*self._read_all())

    def _read_all(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        self._modes_version = self.store.modes_version()
        return self.store.load_profiles(), self.store.modes()

    async def load_off_loop(self, ready: Callable[[], None] | None = None) -> None:
        """`load` with the store read on the writer thread, after `ready()` (which raises
        while the store cannot be read yet)."""

        def read() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
            if ready is not None:
                ready()
            return self._read_all()

        self.engine.load(*await self._off_loop(read))

    # ---- the steps of one batch
    def _take(self) -> tuple[int, Changes]:
        """On the engine's thread: drain the engine, with a failed batch merged in."""
        changes = _merge(self._retry, self.engine.drain())
        self._retry = Changes()
        self._taken += 1
        if changes.alerts:
            self._unwritten[self._taken] = changes.alerts
        return self._taken, changes

    def _write(self, batch: int, changes: Changes) -> tuple[dict[str, str] | None, Any]:
        """On the writer's thread: the batch, then the modes when another process changed them
        and the other writers' changes of a shared store."""
        if changes.profiles:
            self.store.save_profiles(changes.profiles)
        if changes.alerts:
            self.store.add_alerts(changes.alerts)
            changes.alerts = []  # written: a failure below must not write them twice
        if changes.edges:
            self.store.add_edges(changes.edges)
            changes.edges = []
        self._written = batch
        shared = self.sharing.take() if self.sharing is not None else None
        version = self.store.modes_version()
        if version == self._modes_version:
            return None, shared
        self._modes_version = version
        return self.store.modes(), shared

    def _settle(
        self,
        batch: int,
        changes: Changes,
        news: tuple[dict[str, str] | None, Any],
        failed: bool,
    ) -> None:
        """On the engine's thread: forget a written batch, keep a failed one, apply new modes
        and the other writers' changes."""
        self._unwritten.pop(batch, None)
        if failed:
            self._retry = _merge(changes, self._retry)
        modes, shared = news
        if shared and self.sharing is not None:
            self.sharing.apply(shared)
        if modes is not None:
            self.engine.set_modes(modes)
            if self.changed is not None:
                self.changed()

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
            news = self._write(batch, changes)
        except Exception:
            self._settle(batch, changes, (None, None), failed=True)
            raise
        self._settle(batch, changes, news, failed=False)

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

    async def call_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread, in order with the batches (a person's edit)."""
        return await self._off_loop(fn, *args)

    async def flush_off_loop(self) -> None:
        batch, changes = self._take()
        try:
            news = await self._off_loop(self._write, batch, changes)
        except Exception:
            self._settle(batch, changes, (None, None), failed=True)
            raise
        self._settle(batch, changes, news, failed=False)

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

    async def edges_off_loop(
        self, since: float, until: float | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The stored per-edge counts plus what is not written yet (a failed batch, the
        engine's current counts); a batch being written right now may show a flush later."""
        stored = await self._off_loop(self.store.edges, since, until, namespace)
        pending = [*self._retry.edges, *self.engine.edges.peek()]
        return add_pending(stored, pending, since, until, namespace)

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
