"""serve's loop's CPU per 16 MB ingest batch, in one process: judging the worker's chunks on the
loop (the path kept for an engine whose detector the worker cannot rebuild) against the loop's
part of a batch judged in the worker (meshward.app.batchapply: the snapshot between the two
calls, unpickling the result, adding it). The worker's part of each is timed too.

A serve-like engine (the default config and detectors, the on-disk signature cache) first learns
a small batch, as bench/ingest_load.py's warm-up does; then each round judges one
`big_batch()` (10,000 observations, about 16 MB) both ways on the same starting state.

`--endpoints 676` gives the destination a big learned profile first: its snapshot and install
are then the loop's largest steps per batch.

Run: .venv/bin/python bench/ingest_loop.py [--rounds 3] [--items 10000] [--endpoints N]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshward.app import batchjudge, ingest, sigcache
from meshward.app.batchapply import BatchDoor
from meshward.app.pipeline import Pipeline
from meshward.core.engine import Engine, EngineConfig
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner
from tests.support.ingest import big_batch


def serve_like(
    config: EngineConfig, endpoints: int = 0
) -> tuple[Engine, Metrics, Joiner, Pipeline]:
    """A serve-like engine that learned a small batch and, with `endpoints`, that many more
    endpoints of the batch's destination (a big profile: snapshotted and installed per batch)."""
    engine = Engine(config, sigcache.detector(config))
    metrics, joiner = Metrics(), Joiner()
    pipeline = Pipeline(engine, metrics, joiner)
    for chunk in ingest.parse(big_batch(10) + b"\n" + many_endpoints(endpoints)).chunks:
        for obs, prepared in pickle.loads(chunk):
            pipeline.take_ingested(obs, prepared)
    return engine, metrics, joiner, pipeline


def many_endpoints(n: int) -> bytes:
    """JSON Lines teaching shop/api `n` distinct endpoints (up to 6,750): /{a..o}x/{a..o}y/{a..o}z
    for GET and POST (15 literals per level stay under the cardinality bound)."""
    lines = []
    for k in range(n):
        pair, method = divmod(k, 2)
        rest, third = divmod(pair, 15)
        first, second = divmod(rest, 15)
        item = {
            "seen_by": "node-tap",
            "source": {"namespace": "shop", "workload": "web"},
            "destination": {"namespace": "shop", "workload": "api"},
            "method": ("GET", "POST")[method],
            "path": f"/{chr(97 + first)}x/{chr(97 + second)}y/{chr(97 + third)}z",
            "query": "page=1&sort=asc",
        }
        lines.append(json.dumps(item))
    return "\n".join(lines).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument(
        "--endpoints",
        type=int,
        default=0,
        help="endpoints the destination's profile holds before the batch (snapshotted and "
        "installed on the loop per batch)",
    )
    args = ap.parse_args()
    config = EngineConfig()
    ingest._engine = Engine(config, sigcache.detector(config))
    raw = big_batch(args.items)
    clock = time.thread_time
    rows: dict[str, list[float]] = {k: [] for k in ("old loop", "old worker", "loop", "worker")}
    sizes: list[int] = []
    for r in range(args.rounds):
        # today's fallback path: the worker parses and prepares, the loop judges every item
        _engine, _m, _j, pipeline = serve_like(config, args.endpoints)
        t = clock()
        parsed = ingest.parse(raw)
        rows["old worker"].append(clock() - t)
        t = clock()
        for chunk in parsed.chunks:
            for obs, prepared in pickle.loads(chunk):
                pipeline.take_ingested(obs, prepared)
        rows["old loop"].append(clock() - t)
        # the batch judged in the worker: the loop decides between the calls and adds the result
        engine, metrics, joiner, pipeline = serve_like(config, args.endpoints)
        size = sum(p.endpoints for p in engine.allowlist.services.values())
        door = BatchDoor(engine, metrics, joiner, pipeline)
        t = clock()
        first = pickle.dumps(ingest.parse(raw, batch=r))
        worker = clock() - t
        t = clock()
        outline = pickle.loads(first).outline
        snapshot = pickle.dumps(door.snapshot(outline))
        loop = clock() - t
        t = clock()
        result = pickle.dumps(ingest.judge_kept(r, pickle.loads(snapshot)))
        worker += clock() - t
        t = clock()
        judged = pickle.loads(result)
        assert door.apply(judged) == []
        door.close()
        loop += clock() - t
        batchjudge.forget(r)
        rows["loop"].append(loop)
        rows["worker"].append(worker)
        sizes.append(len(first) + len(snapshot) + len(result))
        print(
            f"round {r + 1}: loop {rows['old loop'][-1] * 1e3:.1f} -> {loop * 1e3:.2f} ms, "
            f"worker {rows['old worker'][-1]:.2f} -> {worker:.2f} s, "
            f"{sizes[-1] / 1e3:.1f} kB crossed, {size} endpoints learned before"
        )

    def med(k: str) -> float:
        return statistics.median(rows[k])

    print(
        f"{args.items} observations ({len(raw) / 1e6:.1f} MB), median of {args.rounds}: "
        f"serve's loop {med('old loop') * 1e3:.1f} ms judging on the loop, "
        f"{med('loop') * 1e3:.2f} ms with the worker judging ({med('old loop') / med('loop'):.0f}x "
        f"less; {med('loop') / args.items * 1e6:.2f} µs per observation); the worker "
        f"{med('old worker'):.2f} -> {med('worker'):.2f} s"
    )


if __name__ == "__main__":
    main()
