"""The SQLite store: profiles, modes, alerts, schema checks, several connections at once."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from meshward.app.store import SCHEMA_VERSION, SqliteStore, Store, StoreError, open_store
from meshward.core.quota import AlertQuota


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sub" / "dir" / "m.db")


def test_profiles_roundtrip_upsert_delete(db: str) -> None:
    with open_store(db) as s:
        assert isinstance(s, Store)
        assert s.load_profiles() == {}
        s.save_profiles({"shop/cart": {"rules": [1, 2]}, "shop/pay": {"rules": []}})
        s.save_profiles({"shop/cart": {"rules": [3]}})
        assert s.load_profiles() == {"shop/cart": {"rules": [3]}, "shop/pay": {"rules": []}}
        s.delete_profile("shop/pay")
        s.delete_profile("never/there")
        assert list(s.load_profiles()) == ["shop/cart"]
    with open_store(db) as s:  # persisted across reopen
        assert s.load_profiles() == {"shop/cart": {"rules": [3]}}


def test_save_is_all_or_nothing(db: str) -> None:
    with open_store(db) as s:
        s.save_profiles({"a/a": {"v": 1}})
        with pytest.raises(TypeError):
            s.save_profiles({"a/a": {"v": 2}, "b/b": {"bad": object()}})
        assert s.load_profiles() == {"a/a": {"v": 1}}


def test_replace_profiles(db: str) -> None:
    with open_store(db) as s:
        s.save_profiles({"a/a": {"v": 1}, "b/b": {"v": 2}})
        s.replace_profiles({"c/c": {"v": 3}})
        assert s.load_profiles() == {"c/c": {"v": 3}}
        with pytest.raises(TypeError):
            s.replace_profiles({"d/d": {"x": {1, 2}}})
        assert s.load_profiles() == {"c/c": {"v": 3}}


def test_modes_and_version_seen_by_other_connection(db: str) -> None:
    writer, reader = open_store(db), open_store(db)
    try:
        v0 = reader.modes_version()
        assert reader.modes() == {}
        writer.set_mode("shop", "enforce")
        assert reader.modes_version() == v0 + 1
        assert reader.modes() == {"shop": "enforce"}
        writer.set_mode("shop", "monitor")
        writer.set_mode("pay", "learn")
        assert reader.modes_version() == v0 + 3
        assert reader.modes() == {"pay": "learn", "shop": "monitor"}
        with pytest.raises(ValueError, match="unknown mode"):
            writer.set_mode("shop", "block")
        with pytest.raises(ValueError, match="empty"):
            writer.set_mode("", "learn")
        assert reader.modes_version() == v0 + 3
    finally:
        writer.close()
        reader.close()


def test_alerts_bounded_newest_first_filters(db: str) -> None:
    with open_store(db, alert_limit=50) as s:
        batch = []
        for i in range(120):
            ns = "shop" if i % 2 else "pay"
            batch.append(
                {"verdict": "alert", "destination": f"{ns}/api", "n": i, "time": 1000.0 + i}
            )
            if len(batch) == 7:
                s.add_alerts(batch)
                batch = []
        s.add_alerts(batch)
        got = s.alerts(limit=1000)
        assert [a["n"] for a in got] == list(range(119, 69, -1))  # newest 50, newest first
        assert [a["n"] for a in s.alerts(limit=3)] == [119, 118, 117]
        shop = s.alerts(limit=5, namespace="shop")
        assert [a["n"] for a in shop] == [119, 117, 115, 113, 111]
        assert all(a["n"] >= 110 for a in s.alerts(limit=1000, since=1110.0))
        assert len(s.alerts(limit=1000, since=1110.0)) == 10
        s.add_alerts([{"namespace": "explicit", "destination": "x/y"}])
        newest = s.alerts(limit=1)[0]
        assert newest["namespace"] == "explicit" and newest["time"] > 1e9


def test_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWARD_DB", str(tmp_path / "env.db"))
    with open_store() as s:
        assert s.path == str(tmp_path / "env.db")
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("MESHWARD_DB")
    monkeypatch.chdir(tmp_path)
    with open_store() as s:
        assert s.path == "meshward.db"
    assert (tmp_path / "meshward.db").exists()


def test_wal_and_pragmas(db: str) -> None:
    with open_store(db):
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.close()


def test_not_a_meshward_db(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all\n" * 100)
    with pytest.raises(StoreError, match="not a meshward database"):
        open_store(str(text))
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a meshward database"):
        open_store(str(other))


def test_unwritable_paths(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(StoreError, match="cannot create directory"):
        open_store(str(afile / "sub" / "m.db"))
    with pytest.raises(StoreError, match="is a directory"):
        open_store(str(tmp_path))
    with pytest.raises(StoreError, match="no database"):
        open_store(str(tmp_path / "missing.db"), create=False)
    assert not (tmp_path / "missing.db").exists()


def test_newer_schema_refused(db: str) -> None:
    open_store(db).close()
    con = sqlite3.connect(db)
    con.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer than this meshward understands"):
        open_store(db)


def test_closed_store_says_so(db: str) -> None:
    s = open_store(db)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.modes()


def test_writer_waits_for_other_writer(db: str) -> None:
    """A second process-like connection (mode set) waits out a running write, not fails."""
    open_store(db).close()
    hog = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    hog.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        released.set()
        hog.execute("COMMIT")

    t = threading.Thread(target=release)
    t.start()
    try:
        with SqliteStore(db, busy_timeout=5.0) as s:
            s.set_mode("shop", "enforce")
            assert released.is_set()
            assert s.modes() == {"shop": "enforce"}
    finally:
        t.join()
        hog.close()


def test_writer_gives_up_with_clear_error(db: str) -> None:
    open_store(db).close()
    hog = sqlite3.connect(db, isolation_level=None)
    hog.execute("BEGIN IMMEDIATE")
    try:
        with SqliteStore(db, busy_timeout=0.1) as s, pytest.raises(StoreError, match="locked"):
            s.save_profiles({"a/a": {}})
    finally:
        hog.execute("ROLLBACK")
        hog.close()


def test_concurrent_first_open(tmp_path: Path) -> None:
    """Several openers racing on a fresh file all succeed and see one schema. Many rounds: the
    switch to WAL mode answered "database is locked" in about 2% of races (SQLite does not run
    its busy handler there)."""
    for n in range(40):
        path = str(tmp_path / f"race{n}.db")
        errors: list[BaseException] = []

        def opener(path: str = path, errors: list[BaseException] = errors) -> None:
            try:
                with open_store(path) as s:
                    s.save_profiles({"x/y": {"ok": True}})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=opener) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], n
        with open_store(path) as s:
            assert s.load_profiles() == {"x/y": {"ok": True}}


def test_read_only_view(db: str) -> None:
    from meshward.app.store import ReadOnlyStore

    with open_store(db) as s:
        s.save_profiles({"a/a": {"v": 1}})
        s.set_mode("shop", "enforce")
        s.add_alerts([{"destination": "shop/x"}])
        ro = ReadOnlyStore(s)
        assert isinstance(ro, Store)
        ro.save_profiles({"b/b": {"v": 2}})
        ro.replace_profiles({})
        ro.delete_profile("a/a")
        ro.add_alerts([{"destination": "shop/y"}])
        with pytest.raises(StoreError, match="read-only"):
            ro.set_mode("shop", "learn")
        assert ro.load_profiles() == s.load_profiles() == {"a/a": {"v": 1}}
        assert ro.modes() == {"shop": "enforce"} and ro.modes_version() == s.modes_version()
        assert [a["destination"] for a in ro.alerts()] == ["shop/x"]


def test_alert_quotas_per_source_and_destination(db: str) -> None:
    """A flood from one source, or at one destination, evicts its own alerts only."""
    quota = AlertQuota(per_source=5, per_destination=8, total=20)
    with open_store(db, alert_limit=20, alert_quota=quota) as s:
        s.add_alerts([{"source": "a/web", "destination": "shop/api", "n": "real"}])
        s.add_alerts([{"source": "x/evil", "destination": "shop/api", "n": i} for i in range(50)])
        got = s.alerts(limit=100)
        assert [a["n"] for a in got] == [49, 48, 47, 46, 45, "real"]
        s.add_alerts(
            [{"source": f"x/evil{i}", "destination": "shop/db", "n": i} for i in range(30)]
        )
        got = s.alerts(limit=100)
        assert sum(a["destination"] == "shop/db" for a in got) == 8
        assert "real" in [a["n"] for a in got]
        assert s.evicted == {"source-quota": 45, "destination-quota": 22}  # counted, by which
        s.add_alerts([{"source": f"y/{i}", "destination": f"z/{i}"} for i in range(10)])
        assert s.evicted["history"] == 4  # 14 + 10 kept to the limit of 20


def test_a_store_from_before_the_quotas_is_upgraded_in_place(db: str) -> None:
    Path(db).parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('app', 'meshward'), ('schema_version', '1'),"
        " ('modes_version', '0');"
        "CREATE TABLE profiles (destination TEXT PRIMARY KEY, doc TEXT NOT NULL,"
        " updated REAL NOT NULL);"
        "CREATE TABLE modes (namespace TEXT PRIMARY KEY, mode TEXT NOT NULL,"
        " updated REAL NOT NULL);"
        "CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
        " namespace TEXT NOT NULL, doc TEXT NOT NULL);"
        "INSERT INTO alerts (time, namespace, doc) VALUES (1, 'shop', '{\"n\": \"old\"}');"
    )
    con.close()
    with open_store(db, alert_quota=AlertQuota(per_source=2)) as s:
        s.add_alerts([{"source": "x/evil", "destination": "shop/api", "n": i} for i in range(5)])
        assert [a["n"] for a in s.alerts(limit=10)] == [4, 3, "old"]
