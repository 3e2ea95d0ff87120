"""Alerts and per-edge verdict counts in a real PostgreSQL server: every replica's rows are
read by any replica, concurrent counters add up exactly, retention, clear errors without the
password, a lost connection comes back; serve with --alerts-dsn end to end."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import pytest

from meshward.app.pgstore import PostgresAlerts, describe_dsn
from meshward.app.store import AlertStore, SqliteStore, StoreError
from meshward.core.edges import EdgeCount
from meshward.core.quota import AlertQuota
from meshward.core.threats.inspection import NoDetector
from tests.support.postgres import Postgres
from tests.support.serve import running_server

pytestmark = pytest.mark.integration


def alert(ns: str, path: str, verdict: str = "deny") -> dict[str, object]:
    return {"namespace": ns, "destination": f"{ns}/api", "path": path, "verdict": verdict}


def test_every_replica_reads_every_replicas_alerts(alerts_dsn: str) -> None:
    a, b = PostgresAlerts(alerts_dsn, replica="a"), PostgresAlerts(alerts_dsn, replica="b")
    assert isinstance(a, AlertStore)
    try:
        a.add_alerts([alert("shop", "/x"), alert("bank", "/y")])
        b.add_alerts([alert("shop", "/z\x00<script>")])  # NUL and markup are kept as text
        for store in (a, b):
            got = store.alerts(limit=10)
            assert [x["path"] for x in got] == ["/z\x00<script>", "/y", "/x"]
            assert len({x["id"] for x in got}) == 3
            assert [x["replica"] for x in got] == ["b", "a", "a"]
        assert [x["path"] for x in a.alerts(namespace="shop")] == ["/z\x00<script>", "/x"]
        assert a.alerts(limit=1)[0]["path"] == "/z\x00<script>"
        assert a.alerts(since=time.time() + 60) == []
    finally:
        a.close()
        b.close()


def test_edge_counts_from_concurrent_replicas_add_up(alerts_dsn: str) -> None:
    stores = [PostgresAlerts(alerts_dsn, replica=f"r{i}") for i in range(3)]
    now = int(time.time()) // 60 * 60
    rounds = 30

    def write(store: PostgresAlerts) -> None:
        for _ in range(rounds):  # the same rows from every writer: upserts that collide
            store.add_edges(
                [
                    EdgeCount(now, "shop/web", "shop/api", 2, 1, 0),
                    EdgeCount(now, "bank/job", "shop/api", 0, 0, 1),
                    EdgeCount(now - 60, "shop/web", "bank/ledger", 1, 0, 0),
                ]
            )

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        n = rounds * len(stores)
        got = {(e["time"], e["source"], e["destination"]): e for e in stores[0].edges(now - 60)}
        assert got[(now, "shop/web", "shop/api")]["allowed"] == 2 * n
        assert got[(now, "shop/web", "shop/api")]["alerted"] == n
        assert got[(now, "bank/job", "shop/api")]["denied"] == n
        assert got[(now - 60, "shop/web", "bank/ledger")]["allowed"] == n
        # since picks buckets from the one holding it; namespace: either end in it
        assert {e["time"] for e in stores[1].edges(now + 1)} == {now}
        bank = stores[2].edges(now - 60, namespace="bank")
        assert {(e["source"], e["destination"]) for e in bank} == {
            ("bank/job", "shop/api"),
            ("shop/web", "bank/ledger"),
        }
        assert stores[0].edges(now - 60, until=now) == [
            {
                "time": now - 60,
                "source": "shop/web",
                "destination": "bank/ledger",
                "allowed": n,
                "alerted": 0,
                "denied": 0,
            }
        ]
    finally:
        for s in stores:
            s.close()


def test_retention_drops_old_alerts_and_buckets(alerts_dsn: str) -> None:
    whole = AlertQuota(per_source=10, per_destination=10, total=10)  # no quota below the limit
    store = PostgresAlerts(alerts_dsn, alert_limit=3, alert_quota=whole, retention=3600)
    try:
        old = time.time() - 7200
        store.add_alerts([{**alert("shop", "/old"), "time": old}])
        store.add_edges([EdgeCount(int(old) // 60 * 60, "a/b", "c/d", 1, 0, 0)])
        store._pruned = 0.0  # the next write prunes (at most once a minute otherwise)
        store.add_alerts([alert("shop", f"/n{i}") for i in range(5)])
        assert [a["path"] for a in store.alerts(limit=10)] == ["/n4", "/n3", "/n2"]
        assert store.edges(old - 60) == []
        assert store.evicted["retention"] == 1  # the old one, then 2 over the limit or quota
        assert sum(store.evicted.values()) == 3
    finally:
        store.close()


def test_a_flood_from_one_source_leaves_every_other_sources_alerts(alerts_dsn: str) -> None:
    """Two replicas at once: one takes a flood from one source, the other a flood aimed at one
    destination. Every other source's and destination's alerts stay; each flood keeps its own
    quota's worth (the newest). Before the quotas, the flood evicted everything else."""
    quota = AlertQuota(per_source=1_000, per_destination=2_000, total=10_000)
    a, b = (
        PostgresAlerts(alerts_dsn, replica=r, alert_limit=100, alert_quota=quota, trim_every=0)
        for r in "ab"
    )
    assert a.alert_quota == AlertQuota(per_source=10, per_destination=20, total=100)
    quiet = [
        {"source": f"ns{i}/client", "destination": f"ns{i}/api", "path": f"/q{i}"}
        for i in range(12)
    ]
    a.add_alerts(quiet)

    def flood(store: PostgresAlerts, noisy_source: bool) -> None:
        for n in range(20):
            batch = [
                {
                    "source": "evil/bot" if noisy_source else f"many/bot{n}-{i}",
                    "destination": f"shop/api{i % 7}" if noisy_source else "bank/ledger",
                    "path": f"/flood{n}-{i}",
                }
                for i in range(15)
            ]
            store._pruned = 0.0  # every write also runs the whole-history retention pass
            store.add_alerts(batch)

    threads = [threading.Thread(target=flood, args=(s, s is a)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not any(t.is_alive() for t in threads)
        got = a.alerts(limit=1_000)
        paths = {x["path"] for x in got}
        assert {q["path"] for q in quiet} <= paths  # every quiet source is still there
        noisy = [x["path"] for x in got if x["source"] == "evil/bot"]
        assert noisy[:10] == [f"/flood19-{i}" for i in range(14, 4, -1)]  # its newest 10
        assert len(noisy) == 10
        assert len([x for x in got if x["destination"] == "bank/ledger"]) == 20
        assert len(got) <= 100
    finally:
        a.close()
        b.close()


def test_quota_columns_are_added_to_a_table_made_before_them(alerts_dsn: str) -> None:
    with psycopg.connect(alerts_dsn, autocommit=True) as con:
        con.execute(
            "CREATE TABLE meshward_alerts (id BIGSERIAL PRIMARY KEY, "
            "time DOUBLE PRECISION NOT NULL, namespace TEXT NOT NULL, replica TEXT NOT NULL, "
            "doc TEXT NOT NULL)"
        )
        con.execute(
            "INSERT INTO meshward_alerts (time, namespace, replica, doc) "
            "VALUES (%s, 'shop', 'old', '{\"path\": \"/old\"}')",
            (time.time(),),
        )
    store = PostgresAlerts(alerts_dsn, alert_limit=10, alert_quota=AlertQuota(1, 2, 10))
    try:
        store.add_alerts([{"source": "s/a", "destination": "d/b", "path": f"/{i}"} for i in "xy"])
        assert [x["path"] for x in store.alerts()] == ["/y", "/old"]  # old rows: a group of ''
    finally:
        store.close()


def test_errors_are_one_line_without_the_password(postgres: Postgres) -> None:
    dsn = f"postgresql://meshward:s3cret-pw@127.0.0.1:{postgres.port}/no_such_db"
    with pytest.raises(StoreError) as err:
        PostgresAlerts(dsn)
    assert "s3cret-pw" not in str(err.value) and "no_such_db" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="not a PostgreSQL DSN"):
        PostgresAlerts("postgresql://x:y@[::1")
    assert describe_dsn(dsn) == f"meshward@127.0.0.1:{postgres.port}/no_such_db"


def test_a_lost_connection_is_reopened(alerts_dsn: str, postgres: Postgres) -> None:
    store = PostgresAlerts(alerts_dsn)
    try:
        store.add_alerts([alert("shop", "/a")])
        with psycopg.connect(postgres.dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'meshward'"
            )
        store.add_alerts([alert("shop", "/b")])  # reconnects once
        assert [a["path"] for a in store.alerts()] == ["/b", "/a"]
    finally:
        store.close()


def test_two_serves_share_alerts_and_edges(alerts_dsn: str, tmp_path: Path) -> None:
    """Two `meshward serve` (each its own SQLite allowlist) with --alerts-dsn: an alert one
    raised is read through the other's API, and so are both's edge counts."""
    from meshward.core.observation import Identity, Observation

    def obs(path: str) -> Observation:
        return Observation(
            seen_by="file",
            source=Identity(namespace="shop", workload="web"),
            destination=Identity(namespace="shop", workload="api"),
            method="GET",
            path=path,
        )

    async def main() -> None:
        async with (
            running_server(
                str(tmp_path / "a.db"),
                detector=NoDetector(),
                alerts_dsn=alerts_dsn,
                flush_interval=0.1,
            ) as a,
            running_server(
                str(tmp_path / "b.db"),
                detector=NoDetector(),
                alerts_dsn=alerts_dsn,
                flush_interval=0.1,
            ) as b,
        ):
            a.pipeline.take_ingested(obs("/known"))  # learn mode: allowed
            await b.set_mode("shop", "enforce")
            b.pipeline.take_ingested(obs("/admin"))  # unknown to b: denied
            await asyncio.sleep(0.5)
            seen = await a.alerts(limit=10)
            assert [x["path"] for x in seen] == ["/admin"]
            edges = await b.edges(time.time() - 60)
            assert sum(e["allowed"] for e in edges) == 1
            assert sum(e["denied"] for e in edges) == 1
            assert {(e["source"], e["destination"]) for e in edges} == {("shop/web", "shop/api")}

    asyncio.run(main())
    assert SqliteStore(str(tmp_path / "a.db")).alerts() == []  # not in the local file
