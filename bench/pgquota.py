"""The alert quotas' cost in the shared PostgreSQL store (one run, ~30 s, root: a real
PostgreSQL from tests/support/postgres.py).

A table of 300,000 alerts: one source at its 100,000 quota (the default `AlertQuota` scaled to
1,000,000), the rest over 500 sources and 50 destinations. Measured in the same run, the
scenarios alternating: a 200-alert batch from that source to the 50 destinations written
without a quota pass (the baseline: the insert alone), and with one (`trim_every=0`: the pass
that runs at most every `TRIM_EVERY` seconds per writer), then one retention pass
(`trim_total` over the whole table). Prints medians, spreads and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from meshward.app import pgstore
from meshward.app.pgstore import PostgresAlerts
from tests.support.postgres import Postgres, missing_reason

ROWS = 300_000
BATCHES = 15


def _fill(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(
            "INSERT INTO meshward_alerts (time, namespace, replica, doc, source, destination) "
            "SELECT extract(epoch from now()), 'ns', 'bench', '{}', "
            "CASE WHEN g %% 3 = 0 THEN 'evil/bot' ELSE 'ns' || (g %% 500) || '/c' END, "
            "'ns' || (g %% 50) || '/api' FROM generate_series(1, %s) g",
            (ROWS,),
        )
        con.execute("VACUUM ANALYZE meshward_alerts")


def _writes(store: PostgresAlerts, trim_every: float) -> list[float]:
    batch = [{"source": "evil/bot", "destination": f"ns{i % 50}/api"} for i in range(200)]
    store.trim_every = trim_every
    out = []
    for _ in range(BATCHES):
        t = time.perf_counter()
        store.add_alerts(batch)
        out.append(time.perf_counter() - t)
    return out


def _ms(xs: list[float]) -> str:
    med, lo, hi = (x * 1e3 for x in (statistics.median(xs), min(xs), max(xs)))
    return f"median {med:.1f} ms (min {lo:.1f}, max {hi:.1f})"


def main() -> int:
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    pg = Postgres(Path(tempfile.mkdtemp(prefix="meshward-bench-pg-")))
    pg.start()
    try:
        dsn = pg.new_database()
        store = PostgresAlerts(dsn, replica="bench")
        _fill(dsn)
        store._pruned = time.monotonic()  # the retention pass is measured on its own below
        print(f"quota per source {store.alert_quota.per_source:,}, table {ROWS:,} rows")
        for rnd in (1, 2):
            base = _writes(store, trim_every=1e9)
            quota = _writes(store, trim_every=0.0)
            ratio = statistics.median(quota) / statistics.median(base)
            print(
                f"round {rnd}: insert only {_ms(base)}; with a quota pass {_ms(quota)}; "
                f"ratio {ratio:.1f}x"
            )
        per = statistics.median(quota) - statistics.median(base)
        print(
            f"one quota pass every {pgstore.TRIM_EVERY:.0f} s: about {per / pgstore.TRIM_EVERY:.1%}"
            " of one writer's time"
        )
        store._pruned = 0.0
        t = time.perf_counter()
        store.add_alerts([{"source": "x/y", "destination": "x/z"}])
        print(f"a write with the retention pass: {(time.perf_counter() - t) * 1e3:.1f} ms")
        store.close()
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
