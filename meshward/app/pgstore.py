"""Alerts and per-edge verdict counts in PostgreSQL (`serve --alerts-dsn`): one store every
serve replica writes and any replica (and the dashboard) reads.

Why a database and not etcd: alerts are many and append-only, and the Allowlist objects must
stay small. Why PostgreSQL: a well-kept server every platform runs (managed or in-cluster), with
concurrent writers, `INSERT ... ON CONFLICT DO UPDATE` for the edge counters, and psycopg 3.

- Tables `meshward_alerts` (one row per alert; the document as JSON text: PostgreSQL's `jsonb`
  refuses NUL characters an attacker's path may carry) and `meshward_edges` (one row per time
  bucket, caller and destination, the counts added up by every replica). Created on first use
  under an advisory lock, so replicas starting together do not race.
- Quotas: at most every `TRIM_EVERY` (5) seconds a write trims each source and destination
  written since the last pass to its share of the history: the `AlertQuota` of serve's engine
  scaled to `alert_limit` (`AlertQuota.scaled`; with the defaults 100,000 alerts per source and
  200,000 per destination), by the SQLite store's own rule (`meshward.app.store.trim_quota`), on
  indexes (source, id) and (destination, id). One noisy source, from any replica, evicts its
  own alerts, not the others'.
- Retention: at most once a minute a writer deletes alerts older than `retention` seconds,
  then all but the newest `alert_limit` rows (the same rule again: `trim_total`), and edge
  buckets older than `retention`.
- Concurrent replicas: the trims and the retention pass of a write run under one transaction
  advisory lock (`TRIM_LOCK`), so two writers never delete overlapping rows in different orders
  (no deadlock); inserts and reads do not take it.
- A lost connection is reopened on the next call; errors are one-line `StoreError`s that never
  show the DSN's password (the flusher keeps the batch and retries it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from meshward.app.store import (
    DEFAULT_EDGE_ROWS,
    StoreError,
    alert_row,
    alert_rows,
    alerts_query,
    edge_query,
    edge_row,
    trim_quota,
    trim_total,
)
from meshward.core.edges import EdgeCount
from meshward.core.log import event
from meshward.core.quota import AlertQuota

log = logging.getLogger("meshward.app.pgstore")

DEFAULT_ALERT_LIMIT = 1_000_000  # rows kept for all replicas together
DEFAULT_RETENTION = 7 * 86400.0
PRUNE_EVERY = 60.0  # seconds between two retention passes of one writer
TRIM_EVERY = 5.0  # seconds between two quota passes of one writer (over the keys written since)
MAX_DUE_KEYS = 10_000  # sources + destinations awaiting a quota pass: past that, one runs now
SCHEMA_LOCK = 0x6D657368  # advisory lock key while creating the tables ("mesh")
TRIM_LOCK = 0x7472696D  # advisory lock key while deleting alerts ("trim")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshward_alerts (
    id BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    namespace TEXT NOT NULL,
    replica TEXT NOT NULL,
    doc TEXT NOT NULL
);
ALTER TABLE meshward_alerts ADD COLUMN IF NOT EXISTS source TEXT NOT NULL DEFAULT '';
ALTER TABLE meshward_alerts ADD COLUMN IF NOT EXISTS destination TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS meshward_alerts_namespace ON meshward_alerts (namespace, id);
CREATE INDEX IF NOT EXISTS meshward_alerts_time ON meshward_alerts (time);
CREATE INDEX IF NOT EXISTS meshward_alerts_source ON meshward_alerts (source, id);
CREATE INDEX IF NOT EXISTS meshward_alerts_destination ON meshward_alerts (destination, id);
CREATE TABLE IF NOT EXISTS meshward_edges (
    bucket BIGINT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    allowed BIGINT NOT NULL DEFAULT 0,
    alerted BIGINT NOT NULL DEFAULT 0,
    denied BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, source, destination)
)
"""


def describe_dsn(dsn: str) -> str:
    """`user@host:port/dbname` of a DSN (URI or key=value), never its password."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    host = d.get("host") or "localhost"
    where = f"{host}:{d['port']}" if d.get("port") else str(host)
    who = f"{d['user']}@" if d.get("user") else ""
    return f"{who}{where}/{d.get('dbname') or ''}"


class PostgresAlerts:
    """`AlertStore` on PostgreSQL. Connects at once (StoreError when it cannot).

    `alert_quota` is serve's (the engine's) quota; the store keeps its shares of `alert_limit`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        replica: str = "",
        alert_limit: int = DEFAULT_ALERT_LIMIT,
        alert_quota: AlertQuota | None = None,
        retention: float = DEFAULT_RETENTION,
        trim_every: float = TRIM_EVERY,
        connect_timeout: int = 5,
    ) -> None:
        try:
            conninfo_to_dict(dsn)
        except psycopg.Error:
            raise StoreError("--alerts-dsn is not a PostgreSQL DSN (postgresql://...)") from None
        self._dsn = dsn
        self.where = describe_dsn(dsn)
        self.replica = replica
        self.alert_limit = alert_limit
        self.alert_quota = (alert_quota or AlertQuota()).scaled(alert_limit)
        self.retention = retention
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._con: psycopg.Connection[Any] | None = None
        self._pruned = 0.0
        self.trim_every = trim_every
        self._trimmed = 0.0
        # alerts this writer deleted (quotas, limit, retention): meshward_alerts_evicted_total
        self.evicted: Counter[str] = Counter()
        self._due_sources: set[str] = set()
        self._due_destinations: set[str] = set()
        with self._lock:
            self._run(self._create)

    # ---- plumbing

    def _connect(self) -> psycopg.Connection[Any]:
        if self._con is None or self._con.closed or self._con.broken:
            self._con = psycopg.connect(
                self._dsn,
                connect_timeout=self.connect_timeout,
                application_name="meshward",
                prepare_threshold=None,  # custom plans: the trims use their key's index
            )
        return self._con

    def _run(self, fn: Any, *args: Any) -> Any:
        """`fn(connection, *args)` in one transaction; one reconnect on a lost connection."""
        for attempt in (1, 2):
            try:
                con = self._connect()
                with con.transaction():
                    return fn(con, *args)
            except psycopg.OperationalError as exc:
                self._drop()
                if attempt == 2:
                    raise StoreError(f"alerts database {self.where}: {_one_line(exc)}") from None
            except psycopg.Error as exc:
                raise StoreError(f"alerts database {self.where}: {_one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            finally:
                self._con = None

    @staticmethod
    def _create(con: psycopg.Connection[Any]) -> None:
        con.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                con.execute(stmt)

    # ---- alerts

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        if not alerts:
            return
        now = time.time()
        rows = [
            (t, namespace, self.replica, doc, source, destination)
            for t, namespace, doc, source, destination in (alert_row(a, now) for a in alerts)
        ]

        def write(con: psycopg.Connection[Any]) -> None:
            with con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO meshward_alerts "
                    "(time, namespace, replica, doc, source, destination) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
                if due:
                    con.execute("SELECT pg_advisory_xact_lock(%s)", (TRIM_LOCK,))
                    trim_quota(
                        _deleting(cur),
                        "%s",
                        "meshward_alerts",
                        self.alert_quota,
                        self._due_sources,
                        self._due_destinations,
                        self.evicted,
                    )
            self._prune(con)

        with self._lock:
            self._due_sources.update(r[4] for r in rows)
            self._due_destinations.update(r[5] for r in rows)
            clock = time.monotonic()
            due = clock - self._trimmed >= self.trim_every or (
                len(self._due_sources) + len(self._due_destinations) > MAX_DUE_KEYS
            )
            self._run(write)
            if due:  # trimmed and committed (a failed write keeps the keys for the next one)
                self._trimmed = clock
                self._due_sources.clear()
                self._due_destinations.clear()

    def alerts(
        self, limit: int = 100, namespace: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        sql, params = alerts_query(
            "%s", "meshward_alerts", limit, namespace, since, replica="replica"
        )
        with self._lock:
            rows = self._run(lambda con: con.execute(sql, params).fetchall())
        return alert_rows(rows)

    # ---- per-edge verdict counts

    def add_edges(self, edges: list[EdgeCount]) -> None:
        if not edges:
            return
        # one order for every writer: concurrent upserts of the same rows cannot deadlock
        rows = sorted(
            (e.bucket, e.source, e.destination, e.allowed, e.alerted, e.denied) for e in edges
        )

        def write(con: psycopg.Connection[Any]) -> None:
            with con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO meshward_edges AS e "
                    "(bucket, source, destination, allowed, alerted, denied) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (bucket, source, destination) "
                    "DO UPDATE SET allowed = e.allowed + excluded.allowed, "
                    "alerted = e.alerted + excluded.alerted, denied = e.denied + excluded.denied",
                    rows,
                )
            self._prune(con)

        with self._lock:
            self._run(write)

    def edges(
        self,
        since: float,
        until: float | None = None,
        namespace: str | None = None,
        limit: int = DEFAULT_EDGE_ROWS,
    ) -> list[dict[str, Any]]:
        sql, params = edge_query("%s", "meshward_edges", since, until, namespace, limit)
        with self._lock:
            rows = self._run(lambda con: con.execute(sql, params).fetchall())
        return [edge_row(r) for r in rows]

    # ---- retention and lifetime

    def _prune(self, con: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        con.execute("SELECT pg_advisory_xact_lock(%s)", (TRIM_LOCK,))  # held: a no-op
        cutoff = time.time() - self.retention
        old = con.execute("DELETE FROM meshward_alerts WHERE time < %s", (cutoff,))
        if old.rowcount > 0:
            self.evicted["retention"] += old.rowcount
        trim_total(
            lambda sql, args: con.execute(sql, args).rowcount,
            "%s",
            "meshward_alerts",
            self.alert_limit,
            self.evicted,
        )
        con.execute("DELETE FROM meshward_edges WHERE bucket < %s", (int(cutoff),))
        event(log, "alerts pruned", logging.DEBUG, before=round(cutoff))

    def close(self) -> None:
        with self._lock:
            self._drop()


def _deleting(cur: psycopg.Cursor[Any]) -> Callable[[str, list[tuple[Any, ...]]], int]:
    """`executemany` on `cur` answering the rows it deleted (psycopg sums them)."""

    def run(sql: str, rows: list[tuple[Any, ...]]) -> int:
        cur.executemany(sql, rows)
        return cur.rowcount

    return run


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
