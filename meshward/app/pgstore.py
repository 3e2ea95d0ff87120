"""Alerts and per-edge verdict counts in PostgreSQL (`serve --alerts-dsn`): one store every
serve replica writes and any replica (and the dashboard) reads.

Why a database and not etcd: alerts are many and append-only, and the Allowlist objects must
stay small. Why PostgreSQL: a well-kept server every platform runs (managed or in-cluster), with
concurrent writers, `INSERT ... ON CONFLICT DO UPDATE` for the edge counters, and psycopg 3.

- Tables `meshward_alerts` (one row per alert; the document as JSON text: PostgreSQL's `jsonb`
  refuses NUL characters an attacker's path may carry) and `meshward_edges` (one row per time
  bucket, caller and destination, the counts added up by every replica). Created on first use
  under an advisory lock, so replicas starting together do not race.
- Retention: at most once a minute a writer deletes alerts past `alert_limit` rows or older than
  `retention` seconds, and edge buckets older than `retention`.
- A lost connection is reopened on the next call; errors are one-line `StoreError`s that never
  show the DSN's password (the flusher keeps the batch and retries it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from meshward.app.store import DEFAULT_EDGE_ROWS, StoreError, alert_namespace, edge_query, edge_row
from meshward.core.edges import EdgeCount
from meshward.core.log import event

log = logging.getLogger("meshward.app.pgstore")

DEFAULT_ALERT_LIMIT = 1_000_000  # rows kept for all replicas together
DEFAULT_RETENTION = 7 * 86400.0
PRUNE_EVERY = 60.0  # seconds between two retention passes of one writer
SCHEMA_LOCK = 0x6D657368  # advisory lock key while creating the tables ("mesh")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshward_alerts (
    id BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    namespace TEXT NOT NULL,
    replica TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS meshward_alerts_namespace ON meshward_alerts (namespace, id);
CREATE INDEX IF NOT EXISTS meshward_alerts_time ON meshward_alerts (time);
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
    """`AlertStore` on PostgreSQL. Connects at once (StoreError when it cannot)."""

    def __init__(
        self,
        dsn: str,
        *,
        replica: str = "",
        alert_limit: int = DEFAULT_ALERT_LIMIT,
        retention: float = DEFAULT_RETENTION,
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
        self.retention = retention
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._con: psycopg.Connection[Any] | None = None
        self._pruned = 0.0
        with self._lock:
            self._run(self._create)

    # ---- plumbing

    def _connect(self) -> psycopg.Connection[Any]:
        if self._con is None or self._con.closed or self._con.broken:
            self._con = psycopg.connect(
                self._dsn, connect_timeout=self.connect_timeout, application_name="meshward"
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
        rows = []
        for a in alerts:
            t = a.get("time")
            rows.append(
                (
                    float(t) if isinstance(t, (int, float)) else now,
                    alert_namespace(a),
                    self.replica,
                    json.dumps(a, separators=(",", ":"), default=str),
                )
            )

        def write(con: psycopg.Connection[Any]) -> None:
            with con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO meshward_alerts (time, namespace, replica, doc) "
                    "VALUES (%s, %s, %s, %s)",
                    rows,
                )
            self._prune(con)

        with self._lock:
            self._run(write)

    def alerts(
        self, limit: int = 100, namespace: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if namespace is not None:
            where.append("namespace = %s")
            params.append(namespace)
        if since is not None:
            where.append("time >= %s")
            params.append(float(since))
        sql = "SELECT id, time, replica, doc FROM meshward_alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT %s"
        params.append(max(0, int(limit)))
        with self._lock:
            rows = self._run(lambda con: con.execute(sql, params).fetchall())
        out = []
        for id_, t, replica, doc in rows:
            try:
                a = json.loads(doc)
            except ValueError:
                continue
            if isinstance(a, dict):
                a.setdefault("time", t)
                a["id"] = id_
                if replica:
                    a.setdefault("replica", replica)
                out.append(a)
        return out

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
        sql, params = edge_query("%s", since, until, namespace, limit)
        sql = sql.replace("FROM edges", "FROM meshward_edges")
        with self._lock:
            rows = self._run(lambda con: con.execute(sql, params).fetchall())
        return [edge_row(r) for r in rows]

    # ---- retention and lifetime

    def _prune(self, con: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        cutoff = time.time() - self.retention
        con.execute(
            "DELETE FROM meshward_alerts WHERE time < %s OR id <= "
            "(SELECT COALESCE(MAX(id), 0) FROM meshward_alerts) - %s",
            (cutoff, self.alert_limit),
        )
        con.execute("DELETE FROM meshward_edges WHERE bucket < %s", (int(cutoff),))
        event(log, "alerts pruned", logging.DEBUG, before=round(cutoff))

    def close(self) -> None:
        with self._lock:
            self._drop()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
