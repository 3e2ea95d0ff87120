"""Where meshward keeps what it learned: allowlist profiles, namespace modes, alert history.

One interface (`Store`) so a Kubernetes custom-resource store can stand in for the embedded
SQLite one (`SqliteStore`). The SQLite store runs in WAL mode with synchronous=NORMAL: a
committed transaction survives the process being killed (kill -9) and readers never block the
one writer, so `meshward mode set` can run while `meshward serve` holds the database open.
The engine batches learning and calls `save_profiles` once per flush interval, never per request.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meshward.core.edges import BUCKET_SECONDS, EdgeCount
from meshward.core.log import event
from meshward.core.modes import MODES
from meshward.core.quota import AlertQuota

log = logging.getLogger("meshward.app.store")

SCHEMA_VERSION = 1
APP_ID = "meshward"
DEFAULT_ALERT_LIMIT = AlertQuota().total
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's write lock
ENV_DB = "MESHWARD_DB"
DEFAULT_DB = "meshward.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    destination TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS modes (
    namespace TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    namespace TEXT NOT NULL,
    doc TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alerts_namespace ON alerts (namespace, id);
"""
_EDGES = """
CREATE TABLE IF NOT EXISTS edges (
    bucket INTEGER NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    allowed INTEGER NOT NULL DEFAULT 0,
    alerted INTEGER NOT NULL DEFAULT 0,
    denied INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, source, destination)
)
"""
DEFAULT_EDGE_RETENTION = 7 * 86400.0  # seconds of per-edge counts kept
DEFAULT_EDGE_ROWS = 10_000  # rows one edges() read returns at most
# the alert quotas' columns, added in place to a store made before them (its rows form one
# group of their own); a meshward without them still writes the same table
_QUOTA_COLUMNS = (
    "ALTER TABLE alerts ADD COLUMN source TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE alerts ADD COLUMN destination TEXT NOT NULL DEFAULT ''",
)
_QUOTA_INDEXES = (
    "CREATE INDEX IF NOT EXISTS alerts_source ON alerts (source, id)",
    "CREATE INDEX IF NOT EXISTS alerts_destination ON alerts (destination, id)",
)


class StoreError(Exception):
    """The store cannot be opened or used; the message is one line meant for a person."""


@runtime_checkable
class AlertStore(Protocol):
    """Where alerts and per-edge verdict counts go: this SQLite file (one replica), or a
    database every replica writes and reads (`meshward.app.pgstore`, --alerts-dsn).
    `evicted`: stored alerts this process deleted to keep the history within its quotas and
    limit, by which (serve exports it as meshward_alerts_evicted_total)."""

    @property
    def evicted(self) -> Counter[str]: ...

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None: ...

    def alerts(
        self, limit: int = 100, namespace: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]: ...

    def add_edges(self, edges: list[EdgeCount]) -> None: ...

    def edges(
        self,
        since: float,
        until: float | None = None,
        namespace: str | None = None,
        limit: int = DEFAULT_EDGE_ROWS,
    ) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


@runtime_checkable
class Store(AlertStore, Protocol):
    """What the engine and the commands need from a store (SQLite, the cluster store)."""

    def load_profiles(self) -> dict[str, dict[str, Any]]: ...

    def save_profiles(self, docs: dict[str, dict[str, Any]]) -> None: ...

    def delete_profile(self, destination: str) -> None: ...

    def replace_profiles(self, docs: dict[str, dict[str, Any]]) -> None: ...

    def modes(self) -> dict[str, str]: ...

    def set_mode(self, namespace: str, mode: str) -> None: ...

    def modes_version(self) -> int: ...


def default_path() -> str:
    """`$MESHWARD_DB`, else ./meshward.db."""
    return os.environ.get(ENV_DB) or DEFAULT_DB


def open_store(
    path: str | None = None,
    *,
    create: bool = True,
    alert_limit: int = DEFAULT_ALERT_LIMIT,
    alert_quota: AlertQuota | None = None,
) -> SqliteStore:
    """Open (and by default create) the SQLite store; StoreError with a clear reason otherwise."""
    return SqliteStore(
        path or default_path(), create=create, alert_limit=alert_limit, alert_quota=alert_quota
    )


def alert_namespace(alert: dict[str, Any]) -> str:
    """The namespace an alert belongs to: its own field, else the `ns/` of its destination."""
    ns = alert.get("namespace")
    if isinstance(ns, str) and ns:
        return ns
    dest = alert.get("destination")
    if isinstance(dest, str) and "/" in dest:
        return dest.split("/", 1)[0]
    return ""


# delete what is past the newest N (of one source, one destination, or all): the row N places
# below the newest and every older one. One rule for both stores: `trim_quota` runs it with
# SQLite's ("?") or PostgreSQL's ("%s") placeholder on either store's table.
_TRIM_KEY = (
    "DELETE FROM {table} WHERE {key} = ? AND id <= "
    "(SELECT id FROM {table} WHERE {key} = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_TRIM_ALL = (
    "DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


def trim_quota(
    delete_many: Callable[[str, list[tuple[Any, ...]]], int],
    mark: str,
    table: str,
    quota: AlertQuota,
    sources: Iterable[str],
    destinations: Iterable[str],
    evicted: Counter[str],
) -> None:
    """Trim each given source to its newest `quota.per_source` alerts, then each given
    destination to `per_destination`, oldest (lowest id) first; the rows deleted are added to
    `evicted` ("source-quota", "destination-quota"). Both stores call it after appending a
    batch, with that batch's sources and destinations (indexes on (source, id) and
    (destination, id) make each trim a walk of at most the quota's entries of one key);
    `delete_many(sql, rows)` runs the statement for each row and answers the rows deleted."""
    for key, keep, keys in (
        ("source", quota.per_source, sorted(set(sources))),
        ("destination", quota.per_destination, sorted(set(destinations))),
    ):
        if keys:
            sql = _TRIM_KEY.format(table=table, key=key).replace("?", mark)
            _count(evicted, f"{key}-quota", delete_many(sql, [(k, k, keep) for k in keys]))


def trim_total(
    delete: Callable[[str, tuple[Any, ...]], int],
    mark: str,
    table: str,
    keep: int,
    evicted: Counter[str],
) -> None:
    """Trim the whole history to its newest `keep` alerts (rows, whatever gaps the ids have);
    the rows deleted are added to `evicted["history"]`."""
    _count(evicted, "history", delete(_TRIM_ALL.format(table=table).replace("?", mark), (keep,)))


def _count(evicted: Counter[str], by: str, deleted: int) -> None:
    if deleted > 0:  # -1: a driver that does not know
        evicted[by] += deleted


def alerts_query(
    mark: str,
    table: str,
    limit: int,
    namespace: str | None,
    since: float | None,
    replica: str = "NULL",
) -> tuple[str, list[Any]]:
    """The newest-first alert read both stores run (`mark`: SQLite's `?`, PostgreSQL's `%s`;
    `replica`: the column naming the writer, where the store has one); its rows are
    (id, time, replica, doc), read back by `alert_rows`."""
    where: list[str] = []
    params: list[Any] = []
    if namespace is not None:
        where.append(f"namespace = {mark}")
        params.append(namespace)
    if since is not None:
        where.append(f"time >= {mark}")
        params.append(float(since))
    sql = f"SELECT id, time, {replica}, doc FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id DESC LIMIT {mark}"
    params.append(max(0, int(limit)))
    return sql, params


def alert_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Stored alerts as documents, with the id and time of their row (and the replica that wrote
    them where the store keeps one); a document that does not parse is skipped."""
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


def alert_row(alert: dict[str, Any], now: float) -> tuple[float, str, str, str, str]:
    """The columns both stores keep of an alert: time (`now` when it has none), namespace, the
    document, source and destination (the keys its quotas count by)."""
    t = alert.get("time")
    return (
        float(t) if isinstance(t, (int, float)) else now,
        alert_namespace(alert),
        json.dumps(alert, separators=(",", ":"), default=str),
        alert_text(alert, "source"),
        alert_text(alert, "destination"),
    )


def alert_text(alert: dict[str, Any], key: str) -> str:
    value = alert.get(key)
    return value if isinstance(value, str) else ""


def _switch_to_wal(con: sqlite3.Connection, busy_timeout: float) -> str:
    """PRAGMA journal_mode=WAL, retried: switching a fresh file needs an exclusive lock, and SQLite
    answers "database is locked" at once, without its busy handler, while another connection
    (a second process opening the same new store) holds one."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            contended = "locked" in str(exc) or "busy" in str(exc)
            if not contended or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteStore:
    """The embedded store: one SQLite file, safe for one writer process plus readers."""

    def __init__(
        self,
        path: str,
        *,
        create: bool = True,
        alert_limit: int = DEFAULT_ALERT_LIMIT,
        alert_quota: AlertQuota | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        """`alert_limit` bounds the whole alert history, `alert_quota` what one source and one
        destination may hold of it (meshward.core.quota)."""
        if alert_limit < 1:
            raise ValueError("alert_limit must be at least 1")
        self.path = path
        self.alert_limit = alert_limit
        self.edge_retention = DEFAULT_EDGE_RETENTION
        self.alert_quota = alert_quota or AlertQuota()
        # stored alerts deleted to keep the quotas and the limit (meshward_alerts_evicted_total)
        self.evicted: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._con = self._connect(path, create, busy_timeout)

    # -- opening -------------------------------------------------------------------------

    def _connect(self, path: str, create: bool, busy_timeout: float) -> sqlite3.Connection:
        p = Path(path)
        if p.is_dir():
            raise StoreError(f"{path} is a directory, not a database file")
        if not p.exists():
            if not create:
                raise StoreError(f"no database at {path} (run `meshward learn` first or --db)")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create directory {p.parent}: {exc.strerror}") from exc
        try:
            con = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            self._prepare(con, path, busy_timeout)
        except BaseException:
            con.close()
            raise
        return con

    def _prepare(self, con: sqlite3.Connection, path: str, busy_timeout: float) -> None:
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a meshward database ({exc})") from exc
        if tables and "meta" not in tables:
            raise StoreError(f"{path} is an SQLite file but not a meshward database")
        try:
            mode = _switch_to_wal(con, busy_timeout)
            con.execute("PRAGMA synchronous=NORMAL")
            if not tables:
                self._create_schema(con)
            self._add_quota_columns(con)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use database {path}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode (got {mode})")
        if meta.get("app") != APP_ID:
            raise StoreError(f"{path} is an SQLite file but not a meshward database")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable schema_version in meta table") from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, newer than this meshward understands "
                f"({SCHEMA_VERSION}): upgrade meshward"
            )
        try:  # added after version 1 shipped: created on first open (no-op afterwards)
            con.execute(_EDGES)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use database {path}: {exc}") from exc

    @staticmethod
    def _create_schema(con: sqlite3.Connection) -> None:
        """Create the tables in one transaction; a concurrent creator simply waits and no-ops."""
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("app", APP_ID), ("schema_version", str(SCHEMA_VERSION)), ("modes_version", "0")],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _add_quota_columns(con: sqlite3.Connection) -> None:
        """The alert quotas' columns and indexes, added once to a store made before them."""
        indexes = {r[1] for r in con.execute("PRAGMA index_list(alerts)")}
        if {"alerts_source", "alerts_destination"} <= indexes:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in con.execute("PRAGMA table_info(alerts)")}
            if "source" not in columns:  # another process may have added them meanwhile
                for stmt in _QUOTA_COLUMNS:
                    con.execute(stmt)
            for stmt in _QUOTA_INDEXES:
                con.execute(stmt)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- plumbing ------------------------------------------------------------------------

    @property
    def _c(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"store {self.path} is closed")
        return self._con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so it cannot deadlock."""
        with self._lock:
            con = self._c
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write: {exc}") from exc
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: write failed: {exc}") from exc
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._c.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc

    # -- profiles ------------------------------------------------------------------------

    def load_profiles(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for dest, doc in self._read("SELECT destination, doc FROM profiles ORDER BY destination"):
            try:
                value = json.loads(doc)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                event(log, "skipping unreadable profile", logging.WARNING, destination=dest)
                continue
            out[dest] = value
        return out

    @staticmethod
    def _rows(docs: dict[str, dict[str, Any]]) -> list[tuple[str, str, float]]:
        """Serialise first, so a document that is not JSON-able fails before anything is written."""
        now = time.time()
        return [
            (str(dest), json.dumps(doc, separators=(",", ":")), now) for dest, doc in docs.items()
        ]

    def save_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        """Upsert many profile documents in one transaction."""
        if not docs:
            return
        rows = self._rows(docs)
        with self._write() as con:
            con.executemany(
                "INSERT INTO profiles (destination, doc, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (destination) DO UPDATE SET doc = excluded.doc, "
                "updated = excluded.updated",
                rows,
            )

    def delete_profile(self, destination: str) -> None:
        with self._write() as con:
            con.execute("DELETE FROM profiles WHERE destination = ?", (destination,))

    def replace_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        """Make the stored profiles exactly `docs`, all or nothing (allowlist import --replace)."""
        rows = self._rows(docs)
        with self._write() as con:
            con.execute("DELETE FROM profiles")
            con.executemany(
                "INSERT INTO profiles (destination, doc, updated) VALUES (?, ?, ?)", rows
            )

    # -- modes ---------------------------------------------------------------------------

    def modes(self) -> dict[str, str]:
        return dict(self._read("SELECT namespace, mode FROM modes ORDER BY namespace"))

    def set_mode(self, namespace: str, mode: str) -> None:

        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} ({', '.join(MODES)})")
        if not namespace:
            raise ValueError("namespace must not be empty")
        with self._write() as con:
            con.execute(
                "INSERT INTO modes (namespace, mode, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace) DO UPDATE SET mode = excluded.mode, "
                "updated = excluded.updated",
                (namespace, mode, time.time()),
            )
            con.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'modes_version'"
            )

    def modes_version(self) -> int:
        """A counter bumped by every `set_mode`, from any process: poll it, re-read on change."""
        rows = self._read("SELECT value FROM meta WHERE key = 'modes_version'")
        return int(rows[0][0]) if rows else 0

    # -- alerts --------------------------------------------------------------------------

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Append alerts and trim the history, in one transaction: each source of the batch to
        its newest `alert_quota.per_source`, each destination to `per_destination`, then all to
        the newest `alert_limit`. A flood from one source, or at one destination, evicts its
        own alerts, not everyone else's."""
        if not alerts:
            return
        now = time.time()
        rows = [alert_row(a, now) for a in alerts]
        q = self.alert_quota
        with self._write() as con:
            con.executemany(
                "INSERT INTO alerts (time, namespace, doc, source, destination) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            trim_quota(
                lambda sql, keys: con.executemany(sql, keys).rowcount,
                "?",
                "alerts",
                q,
                [r[3] for r in rows],
                [r[4] for r in rows],
                self.evicted,
            )
            trim_total(
                lambda sql, args: con.execute(sql, args).rowcount,
                "?",
                "alerts",
                self.alert_limit,
                self.evicted,
            )

    def alerts(
        self, limit: int = 100, namespace: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; optionally one namespace and/or alerts at or after `since` (epoch s)."""
        sql, params = alerts_query("?", "alerts", limit, namespace, since)
        return alert_rows(self._read(sql, tuple(params)))

    # -- per-edge verdict counts ----------------------------------------------------------

    def add_edges(self, edges: list[EdgeCount]) -> None:
        """Add counts to their (bucket, caller, destination) rows; drop rows past retention."""
        if not edges:
            return
        rows = [(e.bucket, e.source, e.destination, e.allowed, e.alerted, e.denied) for e in edges]
        with self._write() as con:
            con.executemany(
                "INSERT INTO edges (bucket, source, destination, allowed, alerted, denied) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, source, destination) DO UPDATE "
                "SET allowed = allowed + excluded.allowed, alerted = alerted + excluded.alerted, "
                "denied = denied + excluded.denied",
                rows,
            )
            con.execute("DELETE FROM edges WHERE bucket < ?", (time.time() - self.edge_retention,))

    def edges(
        self,
        since: float,
        until: float | None = None,
        namespace: str | None = None,
        limit: int = DEFAULT_EDGE_ROWS,
    ) -> list[dict[str, Any]]:
        """Counts of buckets starting in [since - bucket, until), oldest first; with
        `namespace`, the edges with either end in it."""
        sql, params = edge_query("?", "edges", since, until, namespace, limit)
        return [edge_row(r) for r in self._read(sql, tuple(params))]

    # -- lifetime ------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """`ok` when SQLite finds the file sound (used by tests and `meshward` diagnostics)."""
        return str(self._read("PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AlertsIn:
    """The alert half of a store whose alerts and edge counts live in another one,
    `alert_store` (the history is local to a replica while profiles may be shared)."""

    alert_store: AlertStore

    @property
    def evicted(self) -> Counter[str]:
        return self.alert_store.evicted

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        self.alert_store.add_alerts(alerts)

    def alerts(
        self, limit: int = 100, namespace: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        return self.alert_store.alerts(limit, namespace, since)

    def add_edges(self, edges: list[EdgeCount]) -> None:
        self.alert_store.add_edges(edges)

    def edges(
        self,
        since: float,
        until: float | None = None,
        namespace: str | None = None,
        limit: int = DEFAULT_EDGE_ROWS,
    ) -> list[dict[str, Any]]:
        return self.alert_store.edges(since, until, namespace, limit)


class StoreView(AlertsIn):
    """A store in front of `inner`: profiles and modes go to `inner`, alerts and edge counts to
    `alert_store` (by default `inner` too). The views below override what they change."""

    def __init__(self, inner: Store, alerts: AlertStore | None = None) -> None:
        self.inner = inner
        self.alert_store = alerts if alerts is not None else inner

    def load_profiles(self) -> dict[str, dict[str, Any]]:
        return self.inner.load_profiles()

    def save_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        self.inner.save_profiles(docs)

    def delete_profile(self, destination: str) -> None:
        self.inner.delete_profile(destination)

    def replace_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        self.inner.replace_profiles(docs)

    def modes(self) -> dict[str, str]:
        return self.inner.modes()

    def set_mode(self, namespace: str, mode: str) -> None:
        self.inner.set_mode(namespace, mode)

    def modes_version(self) -> int:
        return self.inner.modes_version()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self.alert_store is not self.inner:
                self.alert_store.close()


class ReadOnlyStore(StoreView):
    """A view for dry runs (`meshward score`): reads go to `inner`, learning and alerts are
    dropped, a mode change is refused. The live alert history stays the live traffic's."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._evicted: Counter[str] = Counter()  # it never writes, so never evicts

    @property
    def evicted(self) -> Counter[str]:
        return self._evicted

    def save_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        pass

    def delete_profile(self, destination: str) -> None:
        pass

    def replace_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        pass

    def set_mode(self, namespace: str, mode: str) -> None:
        raise StoreError("this store is opened read-only")

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        pass

    def add_edges(self, edges: list[EdgeCount]) -> None:
        pass


class WithAlerts(StoreView):
    """A store whose alerts and edge counts go to another store (`serve --alerts-dsn`)."""

    def __init__(self, inner: Store, alerts: AlertStore) -> None:
        super().__init__(inner, alerts)


def edge_query(
    mark: str, table: str, since: float, until: float | None, namespace: str | None, limit: int
) -> tuple[str, list[Any]]:
    """The edges read for SQLite (`mark` "?") and PostgreSQL ("%s"): one query text."""
    where = ["bucket >= ?"]
    params: list[Any] = [int(since) - BUCKET_SECONDS + 1]
    if until is not None:
        where.append("bucket < ?")
        params.append(float(until))
    if namespace is not None:
        where.append("(substr(source, 1, ?) = ? OR substr(destination, 1, ?) = ?)")
        prefix = f"{namespace}/"
        params += [len(prefix), prefix, len(prefix), prefix]
    sql = (
        f"SELECT bucket, source, destination, allowed, alerted, denied FROM {table} WHERE "
        + " AND ".join(where)
        + " ORDER BY bucket, source, destination LIMIT ?"
    )
    params.append(max(0, min(int(limit), DEFAULT_EDGE_ROWS)))
    return sql.replace("?", mark), params


def edge_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return EdgeCount(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5])).as_dict()
